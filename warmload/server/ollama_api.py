"""Ollama-compatible generation: POST /api/generate, POST /api/chat (NDJSON streaming by
default), keep_alive, load/unload by an empty prompt, `format` (structured output), `tools`
(message.tool_calls), `suffix` (fill-in-the-middle). The model routes are in ollama_models.py
and the embeddings in embeddings.py; errors are Ollama's {"error": "message"} (app.py).

Reference: Ollama's docs/api.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmload.server.disconnect import cancel_on_disconnect
from warmload.server.errors import error_response
from warmload.server.generation import Generation
from warmload.server.ollama_schema import parse_ollama
from warmload.server.tools import ToolStream, parse_tool_calls


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


async def generate(request: Request, state: Any) -> Response:
    return await _ollama(request, state, chat=False)


async def chat(request: Request, state: Any) -> Response:
    return await _ollama(request, state, chat=True)


async def _load_or_unload(state: Any, req: Any, chat: bool) -> Response:
    """Ollama: an empty prompt loads the model, with keep_alive 0 it unloads it."""
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


async def _ollama(request: Request, state: Any, chat: bool) -> Response:
    req = parse_ollama(await state.read_json(request), chat, state.config.max_stop_strings)
    empty = (not req.messages) if chat else not (req.prompt or req.suffix)
    if empty:
        return await _load_or_unload(state, req, chat)
    started = time.perf_counter()
    gen = await Generation(state.cache, state.metrics, req, wait=not state.config.no_wait).start()
    if req.stream:
        return StreamingResponse(_stream(gen, chat, started), media_type="application/x-ndjson")
    parts: list[str] = []
    async with cancel_on_disconnect(request, gen.cancel):
        async for _, chunk in gen.events():
            parts.append(chunk.text)
    text = "".join(parts)
    calls: list[Any] = []
    if gen.tool_format is not None:
        names = {t["function"]["name"] for t in req.tools or []}
        text, calls = parse_tool_calls(text, gen.tool_format, names)
    return JSONResponse(_final(gen, chat, text, calls, started))


def _piece(gen: Generation, chat: bool, text: str, calls: list[Any] | None = None) -> dict:
    body: dict[str, Any] = {"model": gen.model_id, "created_at": _now(), "done": False}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [call.as_ollama() for call in calls]
        body["message"] = message
    else:
        body["response"] = text
    return body


def _final(
    gen: Generation, chat: bool, text: str, calls: list[Any] | None, started: float
) -> dict[str, Any]:
    body = _piece(gen, chat, text, calls)
    t = gen.usage.timings
    body.update(
        done=True,
        done_reason=gen.usage.finish_reason,
        total_duration=_ns(time.perf_counter() - started),
        load_duration=0,
        prompt_eval_count=gen.usage.prompt_tokens,
        prompt_eval_duration=_ns(t.prompt_seconds) if t else 0,
        eval_count=gen.usage.completion_tokens,
        eval_duration=_ns(t.generate_seconds) if t else 0,
    )
    return body


async def _stream(gen: Generation, chat: bool, started: float) -> AsyncIterator[str]:
    names = {t["function"]["name"] for t in gen.request.tools or []}
    tools = ToolStream(gen.tool_format, names) if gen.tool_format else None
    try:
        async for _, chunk in gen.events():
            text = tools.feed(chunk.text) if tools is not None else chunk.text
            if text:
                yield json.dumps(_piece(gen, chat, text)) + "\n"
    except Exception as exc:  # headers are sent: report in-band, as Ollama does
        yield json.dumps({"error": json.loads(error_response(exc, ollama=True).body)["error"]})
        yield "\n"
        return
    rest, calls = tools.finish() if tools is not None else ("", [])
    if rest or calls:
        yield json.dumps(_piece(gen, chat, rest, calls)) + "\n"
    yield json.dumps(_final(gen, chat, "", None, started)) + "\n"


ROUTES = [
    ("/api/generate", "POST", generate),
    ("/api/chat", "POST", chat),
]
