"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions,
streaming as server-sent events ending in `data: [DONE]`, optional usage chunk, logprobs,
n choices, echo, tool calls (message.tool_calls, streamed as delta.tool_calls).

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

from warmload.server.disconnect import cancel_on_disconnect
from warmload.server.errors import error_response
from warmload.server.generation import Generation
from warmload.server.schemas import parse_chat, parse_completion
from warmload.server.tools import ToolStream, parse_tool_calls


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def list_models(request: Request, state: Any) -> Response:
    created = int(state.started)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "warmload"}
        for name in [*state.cache.entries, *state.cache.aliases]
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
    """Legacy logprobs; with echo, the prompt's tokens come first (the first one's is null)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []

    def add(token: int, lp: float | None, top: list[tuple[int, float]] | None) -> None:
        nonlocal offset
        text, _ = _token_text(engine, token)
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        token_logprobs.append(lp)
        tops.append({_token_text(engine, tid)[0]: v for tid, v in top or []} if lp else None)

    for c in chunks:
        for token, lp, top in c.prompt_logprobs or []:
            add(token, lp, top)
        if c.logprob is not None:
            add(c.token_id, c.logprob, c.top_logprobs)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


async def completions(request: Request, state: Any) -> Response:
    req = parse_completion(await state.read_json(request), state.config.max_stop_strings)
    return await _respond(request, state, req, chat=False)


async def chat_completions(request: Request, state: Any) -> Response:
    req = parse_chat(await state.read_json(request), state.config.max_stop_strings)
    return await _respond(request, state, req, chat=True)


async def _respond(request: Request, state: Any, req: Any, chat: bool) -> Response:
    gen = await Generation(state.cache, state.metrics, req, wait=not state.config.no_wait).start()
    engine = gen.entry.engine
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if req.stream:
        body = _stream(gen, engine, ident, created, chat)
        return StreamingResponse(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    per_choice: dict[int, list[Any]] = {c.index: [] for c in gen.choices}
    async with cancel_on_disconnect(request, gen.cancel):
        async for index, chunk in gen.events():
            per_choice[index].append(chunk)
    choices = [_choice(gen, engine, c, per_choice[c.index], chat) for c in gen.choices]
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": gen.model_id,
            "choices": choices,
            "usage": gen.usage.as_openai(),
        }
    )


def _choice(gen: Generation, engine: Any, choice: Any, chunks: list[Any], chat: bool) -> dict:
    req = gen.request
    text = "".join(c.text for c in chunks)
    body: dict[str, Any] = {
        "index": choice.index,
        "finish_reason": choice.usage.finish_reason,
        "logprobs": None,
    }
    if req.logprobs is not None:
        logprobs = chat_logprobs if chat else completion_logprobs
        body["logprobs"] = logprobs(engine, chunks)
    if not chat:
        body["text"] = (gen.prompt_texts[choice.prompt_index] if req.echo else "") + text
        return body
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if gen.tool_format is not None:
        names = {t["function"]["name"] for t in req.tools or []}
        rest, calls = parse_tool_calls(text, gen.tool_format, names)
        if calls:
            message = {
                "role": "assistant",
                "content": rest or None,
                "tool_calls": [call.as_openai() for call in calls],
            }
            body["finish_reason"] = "tool_calls"
    body["message"] = message
    return body


async def _stream(
    gen: Generation, engine: Any, ident: str, created: int, chat: bool
) -> AsyncIterator[str]:
    model_id = gen.model_id
    obj = "chat.completion.chunk" if chat else "text_completion"
    req = gen.request

    def envelope(choice: dict[str, Any] | None, **extra: Any) -> str:
        return _sse(
            {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model_id,
                "choices": [choice] if choice else [],
                **extra,
            }
        )

    def piece(index: int, text: str, lp: Any = None, finish: str | None = None, **delta) -> str:
        body = {"delta": {"content": text, **delta}} if chat else {"text": text}
        if chat and text is None:
            body["delta"].pop("content")
        return envelope({"index": index, **body, "logprobs": lp, "finish_reason": finish})

    names = {t["function"]["name"] for t in req.tools or []}
    tool_streams = {
        c.index: ToolStream(gen.tool_format, names) for c in gen.choices if gen.tool_format
    }
    offsets = {c.index: 0 for c in gen.choices}
    for c in gen.choices:
        if chat:
            yield piece(c.index, "", role="assistant")
        elif req.echo:
            yield piece(c.index, gen.prompt_texts[c.prompt_index])
    try:
        async for index, chunk in gen.events():
            if chunk.completion is not None:
                yield _stream_end(gen, index, tool_streams.get(index), piece)
                continue
            lp = None
            if chunk.logprob is not None or chunk.prompt_logprobs:
                lp = (
                    chat_logprobs(engine, [chunk])
                    if chat
                    else completion_logprobs(engine, [chunk], offsets[index])
                )
            offsets[index] += len(chunk.text)
            text = chunk.text
            if index in tool_streams:
                text = tool_streams[index].feed(text)
            if text or lp is not None:
                yield piece(index, text, lp)
    except Exception as exc:  # headers are sent: report in-band, as OpenAI's servers do
        yield _sse(json.loads(error_response(exc).body))
        yield "data: [DONE]\n\n"
        return
    if req.include_usage:
        yield envelope(None, usage=gen.usage.as_openai())
    yield "data: [DONE]\n\n"


def _stream_end(gen: Generation, index: int, tools: ToolStream | None, piece: Any) -> str:
    """A choice's last events: held-back content, its tool calls, and its finish_reason."""
    finish = gen.choices[index].usage.finish_reason
    if tools is None:
        return piece(index, "" if gen.request.messages is None else None, finish=finish)
    rest, calls = tools.finish()
    out = piece(index, rest) if rest else ""
    if calls:
        deltas = [call.as_openai(i) for i, call in enumerate(calls)]
        out += piece(index, None, tool_calls=deltas)
        finish = "tool_calls"
    return out + piece(index, None, finish=finish)


ROUTES = [
    ("/v1/models", "GET", list_models),
    ("/v1/completions", "POST", completions),
    ("/v1/chat/completions", "POST", chat_completions),
]
