"""Runs one loaded model's requests on a worker thread with continuous batching
(warmload/batch.py) and streams their chunks to the event loop.

The worker owns the BatchRunner: it takes new requests between steps, runs steps while any
request is active, and sleeps on its queue when there is none. Cancelling a request (client
gone) frees its slot and KV row at the next step boundary.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmload.batch import BatchRequest, BatchRunner
from warmload.config import ServerConfig
from warmload.engine import generation_config

log = logging.getLogger("warmload.server")

_DONE = object()


@dataclass(slots=True)
class Job:
    """The event-loop side of one request: chunks arrive on `out` from the worker."""

    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item: Any) -> None:
        """Called from the worker: a Chunk, an exception, or None (the end)."""
        item = _DONE if item is None else item
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop closed (server shutting down): nobody listens
            pass


class RequestStream:
    """Async iterator over a job's Chunks; raises the job's exception if it failed."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self.job.out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.job.cancelled.set()


class Scheduler:
    """One model's batched generation: submit() from the event loop, a worker runs steps."""

    def __init__(self, engine: Any, config: ServerConfig) -> None:
        self.engine = engine
        self.runner = BatchRunner(engine, config.max_batch)
        self.incoming: queue.Queue[BatchRequest | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="warmload-scheduler", daemon=True)
        self.thread.start()

    @property
    def kv_cache_nbytes(self) -> int:
        return self.runner.kv_cache_nbytes if self.runner.cache is not None else 0

    def submit(
        self, prompt_ids: list[int], options: dict[str, Any], logprobs: int | None = None
    ) -> RequestStream:
        job = Job(asyncio.get_running_loop())
        request = BatchRequest(
            list(prompt_ids),
            generation_config(options),
            job.put,
            logprobs=logprobs,
            cancelled=job.cancelled,
        )
        self.incoming.put(request)
        return RequestStream(job)

    def _run(self) -> None:
        try:
            while self._take_requests():
                self.runner.step()
        except Exception:  # a bug in the runner: end every request rather than hang them
            log.exception("scheduler stopped")
        finally:
            self.runner.close()

    def _take_requests(self) -> bool:
        """Move queued requests into the runner (blocking while it is idle); False: stop."""
        block = self.runner.idle
        while True:
            try:
                request = self.incoming.get(block=block)
            except queue.Empty:
                return True
            if request is None:
                return False
            try:
                self.runner.add(request)
            except Exception as exc:  # that request's problem only
                request.emit(exc)
                request.emit(None)
            block = self.runner.idle

    def close(self) -> None:
        """Stops after the current step (ending every request); waits for the worker."""
        self.incoming.put(None)
        self.thread.join(timeout=30)
