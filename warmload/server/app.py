"""The HTTP app: Starlette routes over the model cache, error mapping, auth and health.

Every error becomes an OpenAI-style body ({"error": {"message", "type", "param", "code"}})
with a status from its class; an unexpected exception is a 500 with a generic message and a
logged traceback. The server keeps serving after any single bad request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from warmload.config import ServerConfig
from warmload.errors import RequestError
from warmload.server import embeddings, ollama_api, ollama_models, openai_api
from warmload.server.errors import error_response
from warmload.server.metrics import Metrics
from warmload.server.registry import ModelCache
from warmload.server.scheduler import Scheduler

log = logging.getLogger("warmload.server")


class ServerState:
    def __init__(self, config: ServerConfig, make_scheduler: Any = Scheduler) -> None:
        self.config = config
        self.metrics = Metrics()
        self.cache = ModelCache(
            config, make_scheduler, on_load=lambda seconds: self.metrics.observe("load", seconds)
        )
        self.started = time.time()
        self.metrics.gauge(
            "warmload_model_resident_bytes", "Bytes held by loaded models.", self._model_bytes
        )
        self.metrics.gauge(
            "warmload_model_cache_events",
            "Model cache hits, misses, evictions.",
            lambda: {f'event="{k}"': v for k, v in self.cache.counters.items()},
        )
        self.metrics.gauge(  # sampled with each re-warm check (cache.rewarm)
            "warmload_model_residency",
            "Fraction of each loaded model's file resident in the page cache.",
            self.cache.residencies,
        )

    def _model_bytes(self) -> dict[str, float]:
        return {f'model="{e.id}"': e.nbytes for e in self.cache.entries.values() if e.engine}

    async def read_json(self, request: Request) -> dict[str, Any]:
        from warmload.server.fields import parse_json

        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body is {declared} bytes; the limit is {limit}", "body")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise RequestError(f"request body exceeds the limit of {limit} bytes", "body")
        return parse_json(body, limit)


def guarded(handler: Any) -> Any:
    """Wraps a route: auth, then typed errors -> status codes; nothing escapes."""

    async def route(request: Request) -> Response:
        state: ServerState = request.app.state.warmload
        key = state.config.api_key
        if key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                body = {
                    "error": {
                        "message": "invalid or missing API key",
                        "type": "authentication_error",
                        "param": None,
                        "code": 401,
                    }
                }
                return JSONResponse(body, status_code=401)
        state.metrics.inc(
            "warmload_requests_total", "HTTP requests.", labels=f'path="{request.url.path}"'
        )
        try:
            return await handler(request, state)
        except Exception as exc:
            state.metrics.inc(
                "warmload_request_errors_total",
                "Failed requests.",
                labels=f'path="{request.url.path}"',
            )
            return error_response(exc, ollama=request.url.path.startswith("/api/"))

    return route


async def health(request: Request, state: ServerState) -> Response:
    entry = state.cache.entries.get(state.cache.default_id or "")
    status = "ok" if entry is None or entry.state == "ready" else entry.state
    body: dict[str, Any] = {
        "status": status,
        "models": {e.id: e.state for e in state.cache.entries.values()},
    }
    errors = {
        e.id: {"errors": e.scheduler.errors, "last_error": e.scheduler.last_error}
        for e in state.cache.entries.values()
        if getattr(e.scheduler, "errors", 0)
    }
    if errors:  # steps that failed (their requests got errors; the model kept serving)
        body["scheduler_errors"] = errors
    if status == "loading":
        body["progress"] = round(entry.progress, 4)
    if entry is not None and entry.state == "failed":
        scheduler = entry.scheduler
        body["error"] = entry.error or getattr(scheduler, "last_error", None)
    return JSONResponse(body, status_code=200 if status in ("ok", "loading") else 500)


async def metrics(request: Request, state: ServerState) -> Response:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


REWARM_EVERY_SECONDS = 30.0


async def sweep_forever(state: ServerState) -> None:
    """Each second: unload models whose keep-alive ran out; every REWARM_EVERY_SECONDS:
    re-warm idle models whose pages the OS evicted."""
    last_rewarm = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            state.cache.sweep()
            if time.monotonic() - last_rewarm >= REWARM_EVERY_SECONDS:
                last_rewarm = time.monotonic()
                await asyncio.to_thread(state.cache.rewarm)
        except Exception:  # never let housekeeping end the server
            log.exception("model cache sweep failed")


def create_app(config: ServerConfig, make_scheduler: Any = Scheduler) -> Starlette:
    state = ServerState(config, make_scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        default = state.cache.default_id
        if default is not None:
            state.cache.start_load(state.cache.entries[default])  # listen at once, load behind
        sweeper = asyncio.get_running_loop().create_task(sweep_forever(state))
        try:
            yield
        finally:
            sweeper.cancel()
            state.cache.close()

    routes = [
        Route("/health", guarded(health)),
        Route("/metrics", guarded(metrics)),
        *[Route(path, guarded(fn), methods=[m]) for path, m, fn in openai_api.ROUTES],
        *[Route(path, guarded(fn), methods=[m]) for path, m, fn in ollama_api.ROUTES],
        *[Route(path, guarded(fn), methods=[m]) for path, m, fn in ollama_models.ROUTES],
        *[Route(path, guarded(fn), methods=[m]) for path, m, fn in embeddings.OPENAI_ROUTES],
        *[Route(path, guarded(fn), methods=[m]) for path, m, fn in embeddings.OLLAMA_ROUTES],
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.warmload = state
    return app
