"""OpenAI- and Ollama-compatible HTTP server over the engine, with a shared model cache.

`serve(config)` runs uvicorn; `create_app(config)` gives the ASGI app (tests use it directly).
"""

from __future__ import annotations

from warmload.config import ServerConfig


def serve(config: ServerConfig) -> None:
    import uvicorn

    from warmload.server.app import create_app

    # A bounded graceful shutdown: SIGTERM/SIGINT stop the server even while streams are open
    # (they are cut after SHUTDOWN_GRACE_SECONDS; each model's scheduler then fails its requests).
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


SHUTDOWN_GRACE_SECONDS = 5
