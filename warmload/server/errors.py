"""Error classes -> HTTP status and an OpenAI-style error body."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from warmload.errors import (
    DownloadError,
    ModelLoadError,
    RequestError,
    UnsupportedError,
    WarmloadError,
)
from warmload.server.registry import ModelLoadingError, ModelNotFoundError

log = logging.getLogger("warmload.server")


# Most specific first: (class, HTTP status, OpenAI error type).
STATUS = (
    (ModelNotFoundError, 404, "not_found_error"),
    (RequestError, 400, "invalid_request_error"),
    (UnsupportedError, 400, "invalid_request_error"),
    (ModelLoadingError, 503, "server_busy"),
    (DownloadError, 502, "server_error"),
    (ModelLoadError, 500, "server_error"),
    (WarmloadError, 500, "server_error"),
)


def error_response(exc: BaseException, ollama: bool = False) -> JSONResponse:
    """The error's status and body: OpenAI's {"error": {message, type, param, code}}, or
    Ollama's {"error": "message"} for the /api/* routes."""
    match = next(((status, kind) for cls, status, kind in STATUS if isinstance(exc, cls)), None)
    if match is None:
        log.error("unexpected error", exc_info=exc)
        status, kind, message = 500, "server_error", "internal server error"
    else:
        (status, kind), message = match, str(exc)
    headers = {"Retry-After": "2"} if status == 503 else {}
    if ollama:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    body = {
        "error": {
            "message": message,
            "type": kind,
            "param": getattr(exc, "param", None),
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)
