"""Runs generation requests for one loaded model on a worker thread and streams their chunks
to the event loop. Cancelling a request (client gone) stops it at the next token.

This is the sequential scheduler: requests take turns. The batched scheduler replaces the
worker's loop with steps that decode every active sequence in one forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmload.config import ServerConfig

log = logging.getLogger("warmload.server")

_DONE = object()


@dataclass(slots=True)
class Job:
    prompt_ids: list[int]
    options: dict[str, Any]
    logprobs: int | None
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


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
    def __init__(self, engine: Any, config: ServerConfig) -> None:
        self.engine = engine
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.current: Job | None = None
        self.thread = threading.Thread(target=self._run, name="warmload-scheduler", daemon=True)
        self.thread.start()

    def submit(
        self, prompt_ids: list[int], options: dict[str, Any], logprobs: int | None = None
    ) -> RequestStream:
        job = Job(prompt_ids, options, logprobs, asyncio.get_running_loop())
        self.jobs.put(job)
        return RequestStream(job)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.current = job
            if job.cancelled.is_set():
                job.put(_DONE)
                continue
            try:
                for chunk in self.engine.stream_chunks(
                    job.prompt_ids, logprobs=job.logprobs, **job.options
                ):
                    job.put(chunk)
                    if job.cancelled.is_set():
                        break
            except Exception as exc:  # reported to that request only
                log.exception("generation failed")
                job.put(exc)
            job.put(_DONE)

    def close(self) -> None:
        """Stops after the current token; waits for the worker so no thread outlives it."""
        if self.current is not None:
            self.current.cancelled.set()
        self.jobs.put(None)
        self.thread.join(timeout=30)
