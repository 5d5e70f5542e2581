"""Cancel a non-streaming generation when its client goes away.

A streaming response notices a closed socket when it writes (Starlette's StreamingResponse also
listens for http.disconnect). A non-streaming one writes nothing until the end, so it would run
to max_tokens for nobody, holding a batch row. Here a task waits on the ASGI receive channel
(the body has been read: the next message uvicorn delivers is `http.disconnect`) and cancels
the generation at once; the batch runner drops it at its next step.

Reference: the ASGI HTTP spec (http.disconnect); Starlette's Request.is_disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request, cancel: Callable[[], None]) -> AsyncIterator[None]:
    """Within the block, call `cancel()` as soon as the client disconnects."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                cancel()
                return

    task = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
