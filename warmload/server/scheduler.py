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
from warmload.errors import WarmloadError

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


@dataclass(slots=True)
class _Call:
    """A function to run on the worker; its result or exception goes to `future`."""

    fn: Any
    args: tuple
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except Exception as exc:  # the caller's failure only
            self.settle(None, exc)
        else:
            self.settle(result, None)

    def settle(self, result: Any, error: BaseException | None) -> None:
        def deliver() -> None:
            if self.future.done():  # the caller gave up
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop closed
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
        self.incoming: queue.Queue[BatchRequest | _Call | None] = queue.Queue()
        self.errors = 0  # steps that failed unexpectedly (their requests ended with an error)
        self.last_error: str | None = None
        self.failed = False  # the worker stopped: the model must be reloaded
        self.thread = threading.Thread(target=self._run, name="warmload-scheduler", daemon=True)
        self.thread.start()

    @property
    def kv_cache_nbytes(self) -> int:
        return self.runner.kv_cache_nbytes if self.runner.cache is not None else 0

    def submit(
        self,
        prompt_ids: list[int],
        options: dict[str, Any],
        logprobs: int | None = None,
        processor: Any = None,
        prompt_logprobs: bool = False,
    ) -> RequestStream:
        if self.failed or not self.thread.is_alive():
            raise WarmloadError(
                f"the model's scheduler stopped ({self.last_error or 'closed'}); "
                "it is reloaded on the next request"
            )
        job = Job(asyncio.get_running_loop())
        request = BatchRequest(
            list(prompt_ids),
            generation_config(options),
            job.put,
            logprobs=logprobs,
            cancelled=job.cancelled,
            processor=processor,
            prompt_logprobs=prompt_logprobs,
        )
        self.incoming.put(request)
        if self.failed:  # the worker stopped meanwhile: nobody will take it
            self._drain()
        return RequestStream(job)

    def _run(self) -> None:
        """Take requests and run steps until closed. An unexpected exception in a step ends
        the requests in the runner with that error, frees their rows and goes on serving."""
        try:
            while True:
                try:
                    if not self._take_requests():
                        return
                    self.runner.step()
                except Exception as exc:
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("a batch step failed; ending its requests")
                    self.runner.fail_all(WarmloadError(f"internal error in generation: {exc}"))
        except BaseException as exc:  # fail_all itself failed: stop, and say so
            self.failed = True
            self.last_error = self.last_error or f"{type(exc).__name__}: {exc}"
            log.exception("scheduler stopped")
            self._abandon(WarmloadError(f"internal error in generation: {self.last_error}"))
        finally:
            self._drain()
            try:
                self.runner.close()
            except Exception:
                log.exception("closing the batch runner failed")

    def _abandon(self, error: BaseException) -> None:
        """Last resort when the runner cannot clean up: end its requests directly."""
        requests = list(self.runner.waiting)
        requests += [s.request for s in self.runner.slots if s.request is not None]
        self.runner.waiting.clear()
        for slot in self.runner.slots:
            slot.request = slot.seq = None
        for request in requests:
            for event in (error, None):
                try:
                    request.emit(event)
                except Exception:
                    log.exception("ending an abandoned request failed")

    def _drain(self) -> None:
        """End every request still queued (the worker is stopping)."""
        self.failed = True
        gone = WarmloadError("the model was unloaded before this request started")
        while True:
            try:
                request = self.incoming.get_nowait()
            except queue.Empty:
                return
            if isinstance(request, _Call):
                request.settle(None, gone)
            elif request is not None:
                request.emit(gone)
                request.emit(None)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the worker between two steps (the model is the worker's: a forward
        pass of its own, such as embeddings, must not run beside a step); its result."""
        if self.failed or not self.thread.is_alive():
            raise WarmloadError("the model's scheduler stopped; retry to reload it")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.incoming.put(_Call(fn, args, future, loop))
        if self.failed:
            self._drain()
        return await future

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
            if isinstance(request, _Call):
                request.run()
                block = self.runner.idle
                continue
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
