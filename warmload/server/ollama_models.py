"""Ollama's model routes for front-ends: GET /api/tags, GET /api/ps, POST /api/show, GET
/api/version and POST /api/pull (warmload pull, progress streamed as Ollama streams it).

Facts come from the checkpoint's header (formats.summary; nothing is loaded), cached per file
and mtime: true file size, format (gguf / safetensors), family (the architecture), parameter
count and quantization. The digest is the SHA-256 recorded by `warmload pull`/`verify` when
there is one (hashing gigabytes on every /api/tags would be too slow), else "".

Reference: Ollama docs/api.md (List Local Models, Show Model Information, Pull a Model,
Version) and api/types.go (ModelDetails, ShowResponse, ProgressResponse).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

import warmload
from warmload.errors import RequestError
from warmload.server.errors import error_response
from warmload.server.fields import get

OLLAMA_VERSION = "0.6.0"  # the Ollama API level these routes follow (clients check it)
_FACTS: dict[tuple[str, float], dict[str, Any]] = {}
_FACTS_LOCK = threading.Lock()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def model_facts(path: str) -> dict[str, Any]:
    """formats.summary of the model's header (cached until the file changes)."""
    from warmload.catalog import resolve_model_path
    from warmload.formats.open import open_checkpoint
    from warmload.formats.summary import summarize

    resolved = resolve_model_path(path)
    key = (str(resolved), resolved.stat().st_mtime)
    with _FACTS_LOCK:
        cached = _FACTS.get(key)
    if cached is None:
        with open_checkpoint(resolved) as checkpoint:
            summary = summarize(checkpoint)
            metadata = checkpoint.metadata
            template = metadata.get("tokenizer.chat_template")
            summary.pop("tensors", None)
            summary["template"] = template if isinstance(template, str) else ""
            summary["model_info"] = _model_info(metadata, summary)
        summary["modified_at"] = _iso(resolved.stat().st_mtime)
        cached = summary
        with _FACTS_LOCK:
            _FACTS[key] = cached
    return cached


def _model_info(metadata: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Ollama's model_info: the header's scalar keys (no token tables)."""
    info = {
        k: v
        for k, v in metadata.items()
        if isinstance(v, (int, float, str, bool)) and k != "tokenizer.chat_template"
    }
    info["general.architecture"] = summary.get("architecture")
    info["general.parameter_count"] = summary.get("parameter_count")
    return info


def _size_label(n_params: int | None) -> str:
    if not n_params:
        return ""
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"


def details(entry: Any) -> dict[str, Any]:
    """One /api/tags item (also the base of /api/ps and /api/show)."""
    from warmload.pull import lookup_verified

    facts = model_facts(entry.path)
    family = facts.get("architecture") or ""
    return {
        "name": entry.id,
        "model": entry.id,
        "modified_at": facts["modified_at"],
        "size": facts["file_size"],
        "digest": lookup_verified(facts["path"]) or "",
        "details": {
            "parent_model": "",
            "format": facts["format"],
            "family": family,
            "families": [family] if family else None,
            "parameter_size": _size_label(facts.get("parameter_count")),
            "quantization_level": facts.get("file_type") or "",
        },
    }


async def tags(request: Request, state: Any) -> Response:
    models = []
    for entry in list(state.cache.entries.values()):
        try:
            models.append(await asyncio.to_thread(details, entry))
        except (OSError, ValueError, warmload.errors.WarmloadError) as exc:
            models.append({"name": entry.id, "model": entry.id, "error": str(exc)})
    return JSONResponse({"models": models})


async def ps(request: Request, state: Any) -> Response:
    models = []
    for entry in list(state.cache.entries.values()):
        if entry.engine is None:
            continue
        item = await asyncio.to_thread(details, entry)
        expires = entry.expires_at()
        item.update(
            size=entry.nbytes,
            size_vram=0,
            expires_at=None if expires is None else _iso(expires + _wall_offset()),
            active_requests=entry.active,
            requests=entry.stats["requests"],
            load_seconds=round(entry.load_seconds, 4),
            residency=entry.residency,  # last sample (each re-warm check), None before one
            rewarms=entry.rewarms,
        )
        models.append(item)
    return JSONResponse({"models": models})


def _wall_offset() -> float:
    """Seconds to add to a time.monotonic() value to get a wall-clock time."""
    return time.time() - time.monotonic()


async def show(request: Request, state: Any) -> Response:
    data = await state.read_json(request)
    name = get(data, "model", str) or get(data, "name", str)
    entry = state.cache.entry(name)
    item = await asyncio.to_thread(details, entry)
    facts = model_facts(entry.path)
    context = facts.get("context_length")
    template = facts["template"]
    capabilities = ["completion", "embedding"]
    from warmload.server.tools import tool_format

    if template and tool_format(template):
        capabilities.append("tools")
    parameters = f"num_ctx {context}" if context else ""
    return JSONResponse(
        {
            "modelfile": f"# warmload: {facts['path']}\nFROM {facts['path']}\n",
            "parameters": parameters,
            "template": template,
            "details": item["details"],
            "model_info": facts["model_info"],
            "capabilities": capabilities,
            "modified_at": facts["modified_at"],
        }
    )


async def version(request: Request, state: Any) -> Response:
    return JSONResponse({"version": OLLAMA_VERSION, "warmload": warmload.__version__})


async def pull(request: Request, state: Any) -> Response:
    """Ollama's pull, for a URL: warmload downloads it into --models-dir and serves it."""
    data = await state.read_json(request)
    url = get(data, "model", str) or get(data, "name", str) or ""
    if not url.startswith(("http://", "https://")):
        raise RequestError(
            f"warmload pulls model files by URL (model: 'https://host/model.gguf'), not registry "
            f"names like {url!r}",
            "model",
        )
    folder = state.config.models_dir
    if not folder:
        raise RequestError("pulling needs the server started with --models-dir", "model")
    sha256 = get(data, "digest", str)
    if sha256:
        sha256 = sha256.removeprefix("sha256:")
    events = _pull_events(state, url, Path(folder).expanduser(), sha256)
    if get(data, "stream", bool, True):
        return StreamingResponse(_ndjson(events), media_type="application/x-ndjson")
    last: dict[str, Any] = {}
    async for event in events:
        last = event
        if "error" in event:
            return JSONResponse(event, status_code=500)
    return JSONResponse(last)


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for event in events:
        yield json.dumps(event) + "\n"


async def _pull_events(
    state: Any, url: str, folder: Path, sha256: str | None
) -> AsyncIterator[dict[str, Any]]:
    from warmload.pull import pull as download

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]

    def progress(done: int, total: int | None) -> None:
        event = {"status": f"pulling {name}", "digest": name, "completed": done}
        if total is not None:
            event["total"] = total
        loop.call_soon_threadsafe(queue.put_nowait, event)

    yield {"status": "pulling manifest"}
    task = asyncio.ensure_future(
        asyncio.to_thread(download, url, folder, sha256=sha256, progress=progress)
    )
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    while (event := await queue.get()) is not None:
        yield event
    try:
        result = task.result()
    except Exception as exc:
        yield {"error": json.loads(error_response(exc, ollama=True).body)["error"]}
        return
    yield {"status": "verifying sha256 digest", "digest": f"sha256:{result.sha256}"}
    model_id = state.cache.add_model(result.path)
    yield {"status": "writing manifest", "model": model_id}
    yield {"status": "success"}


ROUTES = [
    ("/api/tags", "GET", tags),
    ("/api/ps", "GET", ps),
    ("/api/show", "POST", show),
    ("/api/version", "GET", version),
    ("/api/pull", "POST", pull),
]
