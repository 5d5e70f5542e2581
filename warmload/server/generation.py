"""One request's generation, shared by the OpenAI and Ollama routes: take the model from the
cache, build each choice's prompt ids (chat template with tools, fill-in-the-middle, echo),
its logits processor (logit_bias, constrained decoding), submit every choice to the model's
scheduler as its own batch row, merge their chunks, record metrics, and give the model back
(also when the client leaves: cancel() ends every choice at the next step)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmload.errors import ContextOverflowError, RequestError
from warmload.server.metrics import Metrics
from warmload.server.prompts import build_prompts
from warmload.server.registry import ModelCache, ModelEntry
from warmload.server.schemas import GenerateRequest
from warmload.server.structured import compile_constraint, make_processor


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
class Choice:
    """One row of the answer: which prompt it continues and how it ended."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    seed: int | None = None
    usage: Usage = field(default_factory=Usage)
    processor: Any = None
    stream: Any = None


@dataclass(slots=True)
class Generation:
    """Async-iterate events() for (choice index, Chunk); `usage` sums the choices at the end."""

    cache: ModelCache
    metrics: Metrics
    request: GenerateRequest
    wait: bool = True
    entry: ModelEntry | None = None
    choices: list[Choice] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)  # what echo repeats
    usage: Usage = field(default_factory=Usage)
    model_id: str = ""  # the served model's id (also after the entry is given back)
    tool_format: str | None = None  # the template's tool convention when tools are on

    @property
    def prompt_ids(self) -> list[int]:
        return self.choices[0].prompt_ids if self.choices else []

    async def start(self) -> Generation:
        """Loads (or finds) the model, checks every prompt and compiles any constraint before
        a byte is streamed."""
        self.entry = await self.cache.acquire(
            self.request.model, keep_alive=self.request.keep_alive, wait=self.wait
        )
        self.model_id = self.entry.id
        try:
            await self._prepare(self.entry.engine)
        except BaseException:
            self.close()
            raise
        return self

    async def _prepare(self, engine: Any) -> None:
        req = self.request
        outside = [t for t in req.logit_bias if t >= engine.tokenizer.vocab_size]
        if outside:
            raise RequestError(
                f"logit_bias token {outside[0]} is outside the vocabulary "
                f"(0..{engine.tokenizer.vocab_size - 1})",
                "logit_bias",
            )
        built = build_prompts(engine, req)
        self.prompt_texts, self.tool_format = built.texts, built.tool_format
        for ids in built.ids:
            check_room(engine, len(ids), req.options)
        grammar = None
        if built.constraint is not None:  # compiling may take a while: off the event loop
            grammar = await asyncio.to_thread(
                compile_constraint, built.constraint, engine.tokenizer
            )
        seed = req.options.get("seed")
        for p, ids in enumerate(built.ids):
            for i in range(req.n):
                index = p * req.n + i
                choice = Choice(index, p, ids, None if seed is None else seed + i)
                self.choices.append(choice)
        for choice in self.choices:
            choice.processor = make_processor(engine.tokenizer, req.logit_bias, grammar)

    def cancel(self) -> None:
        """The client left: every choice ends at the model's next step."""
        for choice in self.choices:
            if choice.stream is not None:
                choice.stream.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, Chunk) of every choice as they come; closes the entry at the end."""
        assert self.entry is not None
        scheduler = self.entry.scheduler
        queue: asyncio.Queue = asyncio.Queue()
        echo_scores = self.request.echo and self.request.logprobs is not None
        try:
            for choice in self.choices:
                options = dict(self.request.options)
                if choice.seed is not None:
                    options["seed"] = choice.seed
                choice.stream = scheduler.submit(
                    choice.prompt_ids,
                    options,
                    logprobs=self.request.logprobs,
                    processor=choice.processor,
                    prompt_logprobs=echo_scores,
                )
            tasks = [asyncio.ensure_future(self._pump(c, queue)) for c in self.choices]
            try:
                async for item in self._merged(queue, len(tasks)):
                    yield item
            finally:
                for task in tasks:
                    task.cancel()
        finally:
            self.cancel()  # no-op when finished; frees the rows when the client left
            self.close()

    async def _pump(self, choice: Choice, queue: asyncio.Queue) -> None:
        try:
            async for chunk in choice.stream:
                await queue.put((choice, chunk))
        except Exception as exc:
            await queue.put((choice, exc))
        await queue.put((choice, None))

    async def _merged(self, queue: asyncio.Queue, running: int) -> AsyncIterator[tuple[int, Any]]:
        started = time.perf_counter()
        first_at = last_at = None
        while running:
            choice, item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            now = time.perf_counter()
            if item.token_id is not None:
                if first_at is None:
                    first_at = now
                    self.metrics.observe("ttft", now - started)
                elif last_at is not None:
                    self.metrics.observe("token", now - last_at)
                last_at = now
            if item.completion is not None:
                self._finish(choice, item.completion)
            yield choice.index, item

    def _finish(self, choice: Choice, completion: Any) -> None:
        t = completion.timings
        choice.usage = Usage(
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.generated_tokens,
            cached_tokens=t.cached_tokens,
            finish_reason=completion.finish_reason,
            ttft_seconds=t.ttft_seconds,
            timings=t,
        )
        firsts = {c.prompt_index: c for c in reversed(self.choices)}
        counted = [c for c in self.choices if c.usage.timings is not None]
        self.usage = Usage(
            prompt_tokens=sum(
                c.usage.prompt_tokens for c in counted if firsts[c.prompt_index] is c
            ),
            completion_tokens=sum(c.usage.completion_tokens for c in counted),
            cached_tokens=sum(c.usage.cached_tokens for c in counted),
            finish_reason=self.choices[0].usage.finish_reason,
            ttft_seconds=min(c.usage.ttft_seconds for c in counted),
            timings=self.choices[0].usage.timings or t,
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
