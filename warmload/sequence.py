"""One sequence's generation after its prompt: sampling with its own RNG and logits processor,
stop tokens and stop strings, incremental detokenization, logprobs (of the prompt too, for
echo) and timings. Shared by Engine (one sequence at a time) and the batch runner (many).

The chunk/result types the engine and the server stream (Chunk, Completion, Timings) live here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from warmload.config import GenerationConfig
from warmload.sampling import make_generator, sample_token
from warmload.stopping import StopStrings
from warmload.tokenizer import Tokenizer


@dataclass(slots=True)
class Timings:
    load_seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from the previous call
    prompt_seconds: float = 0.0
    ttft_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0  # after the first token

    @property
    def prompt_tokens_per_second(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        after_first = self.generated_tokens - 1
        return after_first / self.generate_seconds if self.generate_seconds > 0 else 0.0


@dataclass(slots=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    timings: Timings


@dataclass(slots=True)
class Chunk:
    """One streamed step: new text (may be empty while a multi-byte char or a possible stop
    string is held back); the last chunk carries the finished Completion."""

    text: str
    token_id: int | None = None
    completion: Completion | None = field(default=None)
    logprob: float | None = None  # of token_id, when logprobs were asked for
    top_logprobs: list[tuple[int, float]] | None = None
    # echo: each prompt token's (id, logprob or None for the first, top alternatives)
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] | None = None


class LogitsProcessor(Protocol):
    """Changes a sequence's logits before sampling (logit_bias, constrained decoding) and
    follows the tokens sampled. `finished`: the constraint admits nothing more (end here)."""

    finished: bool

    def apply(self, logits: torch.Tensor) -> torch.Tensor: ...

    def accept(self, token: int) -> None: ...


def token_logprobs(
    logits: torch.Tensor, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top` most likely alternatives."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logp, top)
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), alternatives


class SequenceState:
    """One sequence's generation after its prompt: sampling with its own RNG, stop tokens and
    stop strings, incremental detokenization, logprobs and timings. Shared by Engine (one
    sequence at a time) and the batch runner (many): feed step() each position's logits; feed
    the sampled token (history[-1]) back while not `done`; finish() gives the last chunks."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        cfg: GenerationConfig,
        ctx: int,
        started: float,
        logprobs: int | None = None,
        processor: LogitsProcessor | None = None,
    ) -> None:
        self.tokenizer, self.cfg, self.ctx, self.logprobs = tokenizer, cfg, ctx, logprobs
        self.processor = processor
        self.prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] = []
        self.started = started
        self.timings = Timings(prompt_tokens=len(prompt_ids))
        self.generator = make_generator(cfg.seed)
        self.stops = StopStrings(cfg.stop)
        self.decoder = tokenizer.stream_decoder()
        self.history = list(prompt_ids)  # prompt and sampled tokens
        self.generated: list[int] = []
        self.text_parts: list[str] = []
        self.finish_reason: str | None = None if cfg.max_tokens > 0 else "length"
        self.stopped_by_string = False
        self.first_token_at: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def prefilled(self) -> None:
        self.timings.prompt_seconds = time.perf_counter() - self.started

    def step(self, logits: torch.Tensor) -> Chunk | None:
        """Sample the next token from `logits` (vocab,); the chunk to stream, if any."""
        model_logits = logits
        if self.processor is not None:
            logits = self.processor.apply(logits)
        token = sample_token(logits, self.history, self.cfg, self.generator)
        if self.processor is not None:
            self.processor.accept(token)
        logits = model_logits  # logprobs report the model's own distribution
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.timings.ttft_seconds = self.first_token_at - self.started
        self.generated.append(token)
        self.history.append(token)
        if token in self.tokenizer.stop_ids:
            self.finish_reason = "stop"
            scored = self._take_prompt_logprobs()
            return Chunk("", None, prompt_logprobs=scored) if scored else None
        piece, stopped = self.stops.feed(self.decoder.push(token))
        self.text_parts.append(piece)
        if stopped:  # the text before the stop string is still streamed
            self.finish_reason, self.stopped_by_string = "stop", True
            scored = self._take_prompt_logprobs()
            return Chunk(piece, prompt_logprobs=scored) if piece or scored else None
        chunk = Chunk(piece, token)
        if self.logprobs is not None:
            chunk.logprob, chunk.top_logprobs = token_logprobs(logits, token, self.logprobs)
        chunk.prompt_logprobs = self._take_prompt_logprobs()
        if len(self.history) >= self.ctx or len(self.generated) >= self.cfg.max_tokens:
            self.finish_reason = "length"  # no room (or no need) to feed this token back
        elif self.processor is not None and self.processor.finished:
            self.finish_reason = "stop"  # the grammar is complete
        return chunk

    def _take_prompt_logprobs(self) -> list | None:
        """The prompt's logprobs, once (with the first chunk)."""
        taken, self.prompt_logprobs = self.prompt_logprobs or None, []
        return taken

    def score_prompt(self, logits: torch.Tensor, start: int) -> None:
        """Record the logprobs of prompt tokens start+1.. from the logits (T, vocab) at
        positions start..start+T-1 (echo with logprobs; the first prompt token has none)."""
        prompt = self.history if not self.generated else self.history[: -len(self.generated)]
        if start == 0:
            self.prompt_logprobs.append((prompt[0], None, []))
        top = self.logprobs or 0
        for i in range(logits.shape[0]):
            if start + i + 1 >= len(prompt):
                break
            token = prompt[start + i + 1]
            lp, alternatives = token_logprobs(logits[i], token, top)
            self.prompt_logprobs.append((token, lp, alternatives))

    def finish(self) -> Iterator[Chunk]:
        """The held-back tail (unless a stop string cut it) and the chunk with the Completion."""
        if self.prompt_logprobs:  # max_tokens=0 with echo: the prompt's logprobs alone
            yield Chunk("", prompt_logprobs=self._take_prompt_logprobs())
        if not self.stopped_by_string:
            tail, _ = self.stops.feed(self.decoder.flush())
            tail += self.stops.flush()
            self.text_parts.append(tail)
            if tail:
                yield Chunk(tail)
        if self.first_token_at is not None:
            self.timings.generate_seconds = time.perf_counter() - self.first_token_at
        self.timings.generated_tokens = len(self.generated)
        reason = self.finish_reason or "stop"  # None only when cancelled
        completion = Completion("".join(self.text_parts), self.generated, reason, self.timings)
        yield Chunk("", None, completion)

    def cached_ids(self) -> list[int]:
        """Tokens whose K/V were fed through the model (not the last sampled one)."""
        return self.history[:-1] if self.generated else self.history
