"""Embeddings from the loaded generative model: POST /v1/embeddings (OpenAI), /api/embed and
the legacy /api/embeddings (Ollama).

Pooling: the mean over the input's tokens (BOS included where the model adds one) of the
model's last hidden state (after the final norm, before the output head). /v1/embeddings and
/api/embed return it L2-normalized (unit length), as OpenAI and Ollama's /api/embed do; the
legacy /api/embeddings returns it unnormalized, as Ollama's does. Several inputs run as rows of
one forward pass (right-padded; causal attention keeps a row's tokens from seeing its padding),
on the model's scheduler thread between two decode steps.

Reference: OpenAI API reference (Embeddings); Ollama docs/api.md (Generate Embeddings);
llama.cpp's LLAMA_POOLING_TYPE_MEAN.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import torch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from warmload.errors import ContextOverflowError, RequestError
from warmload.server.fields import get

EMBED_BATCH_TOKENS = 2048  # rows x padded length of one forward pass
MAX_INPUTS = 256
EMBED_CHUNK = 512  # positions per forward pass


def openai_inputs(data: dict[str, Any]) -> list[str | list[int]]:
    """OpenAI's input: a string, an array of strings, token ids, or arrays of token ids."""
    value = data.get("input")

    def ids(x: Any) -> bool:
        return (
            isinstance(x, list)
            and bool(x)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        )

    if isinstance(value, str) or ids(value):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(x, str) or ids(x) for x in value):
        inputs = list(value)
    else:
        raise RequestError(
            "input must be a string, an array of strings, or token id arrays", "input"
        )
    if len(inputs) > MAX_INPUTS:
        raise RequestError(f"input has {len(inputs)} items; at most {MAX_INPUTS}", "input")
    if any(x == "" for x in inputs):
        raise RequestError("input must not contain empty strings", "input")
    if get(data, "dimensions", int) is not None:
        raise RequestError(
            "dimensions is not supported: the size is the model's hidden size", "dimensions"
        )
    fmt = get(data, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise RequestError("encoding_format must be float or base64", "encoding_format")
    return inputs


def ollama_inputs(data: dict[str, Any], legacy: bool) -> list[str]:
    if data.get("dimensions") is not None:
        raise RequestError(
            "dimensions is not supported: the size is the model's hidden size", "dimensions"
        )
    if legacy:
        return [get(data, "prompt", str, "")]
    value = data.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        if len(value) > MAX_INPUTS:
            raise RequestError(f"input has {len(value)} items; at most {MAX_INPUTS}", "input")
        return list(value)
    raise RequestError("input must be a string or an array of strings", "input")


def token_ids(engine: Any, inputs: list[str | list[int]], truncate: bool) -> list[list[int]]:
    """Each input's ids; longer than the context: cut (truncate) or a 400."""
    out = []
    for i, item in enumerate(inputs):
        ids = engine.encode_prompt(item) if item != "" else []
        if not ids:
            raise RequestError(f"input[{i}] has no tokens", "input")
        if len(ids) > engine.ctx:
            if not truncate:
                raise ContextOverflowError(
                    f"input[{i}] has {len(ids)} tokens; the context holds {engine.ctx}", "input"
                )
            ids = ids[: engine.ctx]
        out.append(ids)
    return out


def batches(inputs: list[list[int]]) -> list[list[int]]:
    """Input indices grouped for one forward pass each: sorted by length (little padding),
    rows x padded length <= EMBED_BATCH_TOKENS (a longer input runs alone)."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    groups, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order):
            if (stop - start + 1) * len(inputs[order[stop]]) > EMBED_BATCH_TOKENS:
                break
            stop += 1
        groups.append(order[start:stop])
        start = stop
    return groups


@torch.inference_mode()
def embed(engine: Any, rows: list[list[int]], normalize: bool) -> list[np.ndarray]:
    """Mean-pooled last hidden states of each row (float32), in one forward pass."""
    width = max(len(r) for r in rows)
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width, 1), dtype=torch.float32)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1.0
    hidden = _hidden(engine.model, tokens)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # (rows, hidden)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return [row.numpy().copy() for row in pooled]


def _hidden(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Last hidden states (rows, width, hidden) of right-padded rows, in chunks of
    EMBED_CHUNK positions over one cache (bounds attention memory on long inputs)."""
    rows, width = tokens.shape
    cache = model.new_cache(width, rows)
    parts = [
        model(tokens[:, start : start + EMBED_CHUNK], cache, start).float().cpu()
        for start in range(0, width, EMBED_CHUNK)
    ]
    return torch.cat(parts, dim=1)


def encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":  # OpenAI: little-endian float32 bytes, base64
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


async def _run(state: Any, model: str | None, ids_of: Any, normalize: bool, keep_alive=None):
    """(model id, vectors, prompt tokens) with the model held while its worker embeds."""
    entry = await state.cache.acquire(model, keep_alive=keep_alive, wait=not state.config.no_wait)
    try:
        ids = ids_of(entry.engine)
        vectors: list[Any] = [None] * len(ids)
        for group in batches(ids):  # one call each: decode steps of other requests go between
            rows = [ids[i] for i in group]
            for i, vector in zip(
                group, await entry.scheduler.call(embed, entry.engine, rows, normalize)
            ):
                vectors[i] = vector
    finally:
        state.cache.release(entry)
    return entry.id, vectors, sum(len(x) for x in ids)


async def openai_embeddings(request: Request, state: Any) -> Response:
    data = await state.read_json(request)
    inputs = openai_inputs(data)
    fmt = get(data, "encoding_format", str, "float")
    model_id, vectors, n_tokens = await _run(
        state, get(data, "model", str), lambda e: token_ids(e, inputs, truncate=False), True
    )
    items = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, fmt)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return JSONResponse({"object": "list", "data": items, "model": model_id, "usage": usage})


async def ollama_embed(request: Request, state: Any) -> Response:
    return await _ollama(request, state, legacy=False)


async def ollama_embeddings(request: Request, state: Any) -> Response:
    return await _ollama(request, state, legacy=True)


async def _ollama(request: Request, state: Any, legacy: bool) -> Response:
    from warmload.server.ollama_schema import parse_keep_alive

    data = await state.read_json(request)
    inputs = [x for x in ollama_inputs(data, legacy) if x]
    keep_alive = parse_keep_alive(data.get("keep_alive"))
    if not inputs:  # Ollama: nothing to embed loads the model
        entry = await state.cache.acquire(get(data, "model", str), keep_alive=keep_alive)
        state.cache.release(entry)
        return JSONResponse({"embedding": []} if legacy else {"model": entry.id, "embeddings": []})
    truncate = get(data, "truncate", bool, True)
    started = time.perf_counter()
    model_id, vectors, n_tokens = await _run(
        state,
        get(data, "model", str),
        lambda e: token_ids(e, inputs, truncate),
        not legacy,
        keep_alive,
    )
    if legacy:
        return JSONResponse({"embedding": vectors[0].tolist()})
    return JSONResponse(
        {
            "model": model_id,
            "embeddings": [v.tolist() for v in vectors],
            "total_duration": int((time.perf_counter() - started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": n_tokens,
        }
    )


OPENAI_ROUTES = [("/v1/embeddings", "POST", openai_embeddings)]
OLLAMA_ROUTES = [
    ("/api/embed", "POST", ollama_embed),
    ("/api/embeddings", "POST", ollama_embeddings),
]
