"""One request's generation, shared by the OpenAI and Ollama routes: take the model from the
cache, build the prompt ids, submit to the model's scheduler, stream chunks, record metrics,
and give the model back (also when the client leaves mid-stream)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmload.errors import ContextOverflowError, RequestError
from warmload.server.metrics import Metrics
from warmload.server.registry import ModelCache, ModelEntry
from warmload.server.schemas import GenerateRequest


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "stop"
    ttft_seconds: float = 0.0
    timings: Any = None

    def as_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(slots=True)
class Generation:
    """Async-iterate for Chunks; `usage` is filled when the stream ends."""

    cache: ModelCache
    metrics: Metrics
    request: GenerateRequest
    wait: bool = True
    entry: ModelEntry | None = None
    prompt_ids: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model_id: str = ""  # the served model's id (also after the entry is given back)

    async def start(self) -> Generation:
        """Loads (or finds) the model and checks the prompt before any byte is streamed."""
        self.entry = await self.cache.acquire(
            self.request.model, keep_alive=self.request.keep_alive, wait=self.wait
        )
        self.model_id = self.entry.id
        try:
            self.prompt_ids = build_prompt(self.entry.engine, self.request)
            check_room(self.entry.engine, len(self.prompt_ids), self.request.options)
        except BaseException:
            self.close()
            raise
        return self

    async def chunks(self) -> AsyncIterator[Any]:
        assert self.entry is not None
        started = time.perf_counter()
        options = dict(self.request.options)
        stream = self.entry.scheduler.submit(
            self.prompt_ids, options, logprobs=self.request.logprobs
        )
        first_at = last_at = None
        try:
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.token_id is not None:
                    if first_at is None:
                        first_at = now
                        self.metrics.observe("ttft", now - started)
                    elif last_at is not None:
                        self.metrics.observe("token", now - last_at)
                    last_at = now
                if chunk.completion is not None:
                    self._finish(chunk.completion)
                yield chunk
        finally:
            stream.cancel()  # no-op when finished; frees the slot when the client left
            self.close()

    def _finish(self, completion: Any) -> None:
        t = completion.timings
        self.usage = Usage(
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.generated_tokens,
            cached_tokens=t.cached_tokens,
            finish_reason=completion.finish_reason,
            ttft_seconds=t.ttft_seconds,
            timings=t,
        )
        labels = f'model="{self.model_id}"'
        self.metrics.inc("warmload_prompt_tokens_total", "Prompt tokens.", t.prompt_tokens, labels)
        self.metrics.inc(
            "warmload_generated_tokens_total", "Generated tokens.", t.generated_tokens, labels
        )

    def close(self) -> None:
        if self.entry is not None:
            self.cache.release(self.entry)
            self.entry = None


def build_prompt(engine: Any, request: GenerateRequest) -> list[int]:
    messages = request.messages
    if messages is None and request.apply_template:
        messages = [{"role": "user", "content": request.prompt or ""}]
    if messages is None:
        return engine.encode_prompt(request.prompt or "")
    messages = list(messages)
    if request.system and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": request.system})
    return engine.chat_prompt(messages)


def check_room(engine: Any, n_prompt: int, options: dict[str, Any]) -> None:
    if n_prompt == 0:
        raise RequestError("the prompt is empty", "prompt")
    max_tokens = options.get("max_tokens")
    if n_prompt >= engine.ctx:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens but the context holds {engine.ctx}", "prompt"
        )
    if max_tokens is not None and max_tokens < (1 << 30) and n_prompt + max_tokens > engine.ctx:
        raise ContextOverflowError(
            f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the context "
            f"of {engine.ctx} tokens",
            "max_tokens",
        )
