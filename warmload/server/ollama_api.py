"""Ollama-compatible subset: POST /api/generate, POST /api/chat (NDJSON streaming by default),
GET /api/tags, GET /api/ps, keep_alive, and load/unload by an empty prompt.

Reference: Ollama's docs/api.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmload.server.errors import error_response
from warmload.server.generation import Generation
from warmload.server.schemas import parse_ollama


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _iso(monotonic_deadline: float | None) -> str | None:
    if monotonic_deadline is None:
        return None
    wall = time.time() + (monotonic_deadline - time.monotonic())
    return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


async def generate(request: Request, state: Any) -> Response:
    return await _ollama(request, state, chat=False)


async def chat(request: Request, state: Any) -> Response:
    return await _ollama(request, state, chat=True)


async def _ollama(request: Request, state: Any, chat: bool) -> Response:
    req = parse_ollama(await state.read_json(request), chat, state.config.max_stop_strings)
    empty = (not req.messages) if chat else not req.prompt
    if empty:  # Ollama: an empty prompt loads the model, keep_alive 0 unloads it
        entry = state.cache.entry(req.model)
        if req.keep_alive == 0:
            state.cache.unload_when_idle(entry.id)
            reason = "unload"
        else:
            entry = await state.cache.acquire(entry.id, keep_alive=req.keep_alive)
            state.cache.release(entry)
            reason = "load"
        body = {"model": entry.id, "created_at": _now(), "done": True, "done_reason": reason}
        body.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        return JSONResponse(body)
    gen = await Generation(state.cache, state.metrics, req, wait=not state.config.no_wait).start()
    if req.stream:
        return StreamingResponse(_stream(gen, chat), media_type="application/x-ndjson")
    text = "".join([c.text async for c in gen.chunks()])
    return JSONResponse(_final(gen, chat, text))


def _piece(gen: Generation, chat: bool, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": gen.model_id, "created_at": _now(), "done": False}
    body.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
    return body


def _final(gen: Generation, chat: bool, text: str) -> dict[str, Any]:
    body = _piece(gen, chat, text)
    t = gen.usage.timings
    body.update(
        done=True,
        done_reason=gen.usage.finish_reason,
        total_duration=_ns(t.ttft_seconds + t.generate_seconds) if t else 0,
        load_duration=0,
        prompt_eval_count=gen.usage.prompt_tokens,
        prompt_eval_duration=_ns(t.prompt_seconds) if t else 0,
        eval_count=gen.usage.completion_tokens,
        eval_duration=_ns(t.generate_seconds) if t else 0,
    )
    return body


async def _stream(gen: Generation, chat: bool) -> AsyncIterator[str]:
    try:
        async for chunk in gen.chunks():
            if chunk.text:
                yield json.dumps(_piece(gen, chat, chunk.text)) + "\n"
    except Exception as exc:  # headers are sent: report in-band, as Ollama does
        yield json.dumps({"error": json.loads(error_response(exc).body)["error"]["message"]})
        yield "\n"
        return
    yield json.dumps(_final(gen, chat, "")) + "\n"


def _details(entry: Any) -> dict[str, Any]:
    path = Path(entry.path)
    size = path.stat().st_size if path.is_file() else 0
    return {
        "name": entry.id,
        "model": entry.id,
        "size": size,
        "digest": "",
        "details": {"format": path.suffix.lstrip(".") or "safetensors"},
    }


async def tags(request: Request, state: Any) -> Response:
    models = []
    for entry in state.cache.entries.values():
        item = _details(entry)
        path = Path(entry.path)
        if path.exists():
            item["modified_at"] = (
                datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
                .isoformat()
                .replace("+00:00", "Z")
            )
        models.append(item)
    return JSONResponse({"models": models})


async def ps(request: Request, state: Any) -> Response:
    models = []
    for entry in state.cache.entries.values():
        if entry.engine is None:
            continue
        item = _details(entry)
        item.update(
            size=entry.nbytes,
            size_vram=0,
            expires_at=_iso(entry.expires_at()),
            active_requests=entry.active,
            requests=entry.stats["requests"],
            load_seconds=round(entry.load_seconds, 4),
        )
        models.append(item)
    return JSONResponse({"models": models})


ROUTES = [
    ("/api/generate", "POST", generate),
    ("/api/chat", "POST", chat),
    ("/api/tags", "GET", tags),
    ("/api/ps", "GET", ps),
]
