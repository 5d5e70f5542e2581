"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions,
streaming as server-sent events ending in `data: [DONE]`, optional usage chunk, logprobs.

Reference: the OpenAI API reference (Completions, Chat Completions, streaming chunk objects).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmload.server.errors import error_response
from warmload.server.generation import Generation
from warmload.server.schemas import parse_chat, parse_completion


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def list_models(request: Request, state: Any) -> Response:
    created = int(state.started)
    data = [
        {"id": e.id, "object": "model", "created": created, "owned_by": "warmload"}
        for e in state.cache.entries.values()
    ]
    return JSONResponse({"object": "list", "data": data})


def _token_text(engine: Any, token_id: int) -> tuple[str, list[int]]:
    raw = engine.tokenizer.token_to_piece(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(engine: Any, chunks: list[Any]) -> dict[str, Any]:
    content = []
    for c in chunks:
        if c.logprob is None:
            continue
        text, raw = _token_text(engine, c.token_id)
        top = []
        for tid, lp in c.top_logprobs or []:
            t, b = _token_text(engine, tid)
            top.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": c.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(engine: Any, chunks: list[Any], offset: int = 0) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for c in chunks:
        if c.logprob is None:
            continue
        text, _ = _token_text(engine, c.token_id)
        offsets.append(offset)
        offset += len(c.text)
        tokens.append(text)
        token_logprobs.append(c.logprob)
        tops.append({_token_text(engine, tid)[0]: lp for tid, lp in c.top_logprobs or []})
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


async def completions(request: Request, state: Any) -> Response:
    req = parse_completion(await state.read_json(request), state.config.max_stop_strings)
    return await _respond(state, req, chat=False)


async def chat_completions(request: Request, state: Any) -> Response:
    req = parse_chat(await state.read_json(request), state.config.max_stop_strings)
    return await _respond(state, req, chat=True)


async def _respond(state: Any, req: Any, chat: bool) -> Response:
    gen = await Generation(state.cache, state.metrics, req, wait=not state.config.no_wait).start()
    engine = gen.entry.engine
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if req.stream:
        body = _stream(gen, engine, ident, created, chat)
        return StreamingResponse(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    chunks = [c async for c in gen.chunks()]
    text = "".join(c.text for c in chunks)
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": gen.usage.finish_reason,
        "logprobs": None,
    }
    if req.logprobs is not None:
        choice["logprobs"] = (chat_logprobs if chat else completion_logprobs)(engine, chunks)
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": gen.model_id,
            "choices": [choice],
            "usage": gen.usage.as_openai(),
        }
    )


async def _stream(
    gen: Generation, engine: Any, ident: str, created: int, chat: bool
) -> AsyncIterator[str]:
    model_id = gen.model_id
    obj = "chat.completion.chunk" if chat else "text_completion"

    def envelope(choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": ident,
            "object": obj,
            "created": created,
            "model": model_id,
            "choices": [choice] if choice else [],
            **extra,
        }

    if chat:
        yield _sse(
            envelope(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        )
    offset = 0
    try:
        async for chunk in gen.chunks():
            if chunk.completion is not None:
                break
            if not chunk.text and chunk.logprob is None:
                continue
            lp = None
            if chunk.logprob is not None:
                lp = (
                    chat_logprobs(engine, [chunk])
                    if chat
                    else completion_logprobs(engine, [chunk], offset)
                )
            offset += len(chunk.text)
            body = {"delta": {"content": chunk.text}} if chat else {"text": chunk.text}
            yield _sse(envelope({"index": 0, **body, "logprobs": lp, "finish_reason": None}))
    except Exception as exc:  # headers are sent: report in-band, as OpenAI's servers do
        yield _sse(json.loads(error_response(exc).body))
        yield "data: [DONE]\n\n"
        return
    final = {"delta": {}} if chat else {"text": ""}
    yield _sse(
        envelope({"index": 0, **final, "logprobs": None, "finish_reason": gen.usage.finish_reason})
    )
    if gen.request.include_usage:
        yield _sse(envelope(None, usage=gen.usage.as_openai()))
    yield "data: [DONE]\n\n"


ROUTES = [
    ("/v1/models", "GET", list_models),
    ("/v1/completions", "POST", completions),
    ("/v1/chat/completions", "POST", chat_completions),
]
