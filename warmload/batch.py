"""Continuous batching: the sequences of one model decode together, one forward pass per step.

Each request gets a slot: one row of a KV cache of `max_batch` rows. Between steps a request
joins (its prompt is prefilled into its row in chunks, one chunk per step, so the running
streams keep getting a token every step; requests arriving together prefill in the same step
while it has taken under PREFILL_CHUNK prompt tokens, so they decode in step and finish
together instead of trickling in and out of the batch) or leaves (finished or cancelled: its
row is free for the next request at once). A decode step feeds every decoding row its last
sampled token at that row's own position (per-row positions, models/layers.py) and samples
each row with its own options and RNG (engine.SequenceState, the same code the single-sequence
Engine runs).

Where the model has a ragged plan for the cache (fused.ragged_plan: AVX-512 VNNI, every layer
packed), a step is one fused pass over a list of tokens, each with its own row and position:
every decoding row's next token and the joining rows' prompt chunks of up to
fused.CHUNK_TOKENS tokens together (longer chunks run alone through the modules, as Engine
runs them). Every token's result is its own (per-token products, attention over its row), so
a row gets the same bits as run alone. Elsewhere prefill chunks run alone and the decode step
spans rows lo..hi, feeding rows in between a dummy token.

A freed row keeps its tokens' K/V: a later prompt that starts with them (the next turn of a
chat) prefills only what is new, as llama.cpp's server reuses a slot's prompt cache. As in
Engine (engine.reusable_prefix), kept positions are cut back to the start of the forward pass
that made them, so positions are only ever recomputed pass by pass and a repeated request gets
the same bits (decode steps and prompt chunks round differently). A decode step gives a batched
row the same bits as a lone decode (packed kernels, per-row products and attention).

References: Orca (Yu et al., OSDI 2022) iteration-level scheduling; llama.cpp tools/server
(slots, n_parallel, one batch per update_slots, per-slot prompt cache); vLLM's chunked prefill.
This class is not thread-safe: one thread owns it (server/scheduler.py runs it on a worker).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from warmload.config import GenerationConfig
from warmload.engine import Chunk, SequenceState, common_prefix_length, reusable_prefix
from warmload.errors import ContextOverflowError, RequestError, WarmloadError
from warmload.models import fused
from warmload.prompt_cache import memory_adapter

log = logging.getLogger("warmload.batch")

PREFILL_CHUNK = 128  # prompt tokens per step while other rows decode (bounds their stall)
SOLO_PREFILL_CHUNK = 512  # per step when nothing else decodes (only TTFT matters then)
MIN_REUSE = 8  # prompt tokens a free row must already hold to be preferred (not just BOS)
ZERO_AHEAD = 128  # KV positions zeroed past a step's end at once (see _zero_unwritten)


def _emit_quietly(request: BatchRequest, event: Event) -> None:
    try:
        request.emit(event)
    except Exception:  # the listener's failure must not stop the runner
        log.exception("delivering a request's event failed")


def _end(request: BatchRequest, error: BaseException) -> None:
    _emit_quietly(request, error)
    _emit_quietly(request, None)


# What a request's emit() receives: a Chunk, an exception (the request failed), or None (end).
Event = Chunk | BaseException | None


@dataclass(eq=False, slots=True)
class BatchRequest:
    """One generation request; `emit` is called from the runner's thread."""

    prompt_ids: list[int]
    cfg: GenerationConfig
    emit: Callable[[Event], None]
    logprobs: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    processor: Any = None  # engine.LogitsProcessor: logit_bias, constrained decoding
    prompt_logprobs: bool = False  # also give each prompt token's logprob (echo)


@dataclass(eq=False, slots=True)
class Slot:
    """One KV-cache row and the request using it (None: free)."""

    row: int
    request: BatchRequest | None = None
    seq: SequenceState | None = None
    cached: list[int] = field(default_factory=list)  # tokens whose K/V this row holds, in order
    chunk_starts: list[int] = field(default_factory=list)  # first position of each pass
    prefill_pos: int = 0  # next prompt position to prefill; len(prompt): decoding
    clean_to: int = 0  # positions < clean_to hold finite numbers (written or zeroed)
    admitted: int = 0  # admission order: the oldest prefills first
    boundary: int = 0  # where the prompt's shareable prefix ends (a pass ends there; saved)

    @property
    def prefilling(self) -> bool:
        return self.request is not None and self.prefill_pos < len(self.request.prompt_ids)

    @property
    def decoding(self) -> bool:
        return self.request is not None and not self.prefilling


class BatchRunner:
    """Slots over one KV cache; `add` requests, then call `step` until `idle`."""

    def __init__(self, engine: Any, max_batch: int, prefill_chunk: int = PREFILL_CHUNK) -> None:
        if max_batch < 1 or prefill_chunk < 1:
            raise RequestError(
                f"max_batch ({max_batch}) and prefill_chunk ({prefill_chunk}) must be >= 1"
            )
        self.engine = engine
        self.model = engine.model
        self.ctx = engine.ctx
        self.prefill_chunk = prefill_chunk
        self.cache = self.model.new_cache(self.ctx, max_batch)
        self.slots = [Slot(row) for row in range(max_batch)]
        self.waiting: deque[BatchRequest] = deque()
        self._admitted = 0
        self.steps = 0  # forward passes run (prefill chunks and decode steps)
        self._takes_ragged_steps()  # builds this cache's ragged plan now, not on the first step

    @property
    def idle(self) -> bool:
        return not self.waiting and all(s.request is None for s in self.slots)

    @property
    def active(self) -> int:
        return sum(s.request is not None for s in self.slots)

    @property
    def kv_cache_nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.cache.k, *self.cache.v))

    def add(self, request: BatchRequest) -> None:
        """Queue a request (admitted at the next step with a free slot, oldest first)."""
        n = len(request.prompt_ids)
        if not 0 < n < self.ctx:
            raise ContextOverflowError(
                f"the prompt has {n} tokens; it must have 1..{self.ctx - 1} for this context",
                "prompt",
            )
        self.waiting.append(request)

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones, run prefill chunks of the joining
        requests (oldest first, one chunk each, until a step has taken prefill_chunk prompt
        tokens) and one decode step over every decoding row."""
        self._drop_cancelled()
        self._admit()
        ragged = self._takes_ragged_steps()
        short: list[tuple[Slot, int]] = []  # joining rows' chunks for the ragged pass
        budget = self.prefill_chunk  # bounds the running streams' stall
        for slot in sorted((s for s in self.slots if s.prefilling), key=lambda s: s.admitted):
            if budget <= 0:
                break
            start, stop = slot.prefill_pos, self._chunk_stop(slot)
            if ragged and stop - start <= fused.CHUNK_TOKENS:
                short.append((slot, stop))
            else:
                self._guard([slot], self._prefill_chunk, slot)
            budget -= max(1, stop - start)
        decoding = [s for s in self.slots if s.decoding]
        if short or (ragged and decoding):
            involved = decoding + [slot for slot, _ in short]
            self._guard(involved, self._ragged_pass, decoding, short)
        elif decoding:
            self._guard(decoding, self._decode, decoding)

    def close(self) -> None:
        """Fail every request still here (the model is going away) and let go of the cache."""
        self.fail_all(WarmloadError("the model was unloaded before this request finished"))
        self.cache = None

    # -- admission and leaving ----------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.emit(None)
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._free(slot)

    def _admit(self) -> None:
        while self.waiting and any(s.request is None for s in self.slots):
            request = self.waiting.popleft()
            try:  # the request's own options (seed, constraint) may fail: its failure only
                seq = SequenceState(
                    self.engine.tokenizer,
                    request.prompt_ids,
                    request.cfg,
                    self.ctx,
                    request.started,
                    request.logprobs,
                    processor=request.processor,
                )
            except Exception as exc:
                log.warning("request refused at admission: %s", exc)
                _end(request, exc)
                continue
            if seq.done and not request.prompt_logprobs:  # max_tokens=0: no forward pass
                for chunk in seq.finish():
                    request.emit(chunk)
                request.emit(None)
                continue
            slot = self._pick_slot(request.prompt_ids)
            reuse = 0 if request.prompt_logprobs else self._reusable(slot, request.prompt_ids)
            if request.prompt_logprobs:
                slot.chunk_starts, slot.boundary = [], 0
            else:
                reuse = self._restore(slot, request.prompt_ids, reuse)
            slot.request, slot.cached, slot.prefill_pos = request, slot.cached[:reuse], reuse
            slot.seq = seq
            seq.timings.cached_tokens = reuse
            self._admitted += 1
            slot.admitted = self._admitted

    def _restore(self, slot: Slot, prompt_ids: list[int], reuse: int) -> int:
        """Load the longest prefix saved in the engine's prompt cache (when longer than what
        the row keeps) into the row; sets where the row's shareable prefix ends."""
        boundary_of = getattr(self.engine, "prompt_boundary", None)
        cache = getattr(self.engine, "prompt_cache", None)
        boundary = boundary_of(prompt_ids) if boundary_of is not None else 0
        if cache is not None and reuse < boundary:
            memory = memory_adapter(self.cache.rows(slot.row, slot.row + 1))
            found, starts = cache.lookup(prompt_ids[:boundary], memory, longer_than=reuse)
            if found > reuse:
                reuse, slot.cached, slot.chunk_starts = found, prompt_ids[:found], starts
                slot.clean_to = max(slot.clean_to, found)
        slot.boundary = boundary if boundary > reuse else 0
        return reuse

    def _passed(self, slot: Slot, stop: int) -> None:
        """After a prompt pass ending at `stop`: save the row's shareable prefix there."""
        if stop == slot.boundary and slot.request is not None:
            memory = self.cache.rows(slot.row, slot.row + 1)
            prefix = slot.request.prompt_ids[:stop]
            self.engine.save_prefix_job(prefix, memory, slot.chunk_starts)

    @staticmethod
    def _reusable(slot: Slot, prompt_ids: list[int]) -> int:
        """Prompt tokens whose K/V the row keeps (whole forward passes; never the last)."""
        reuse = reusable_prefix(slot.cached, slot.chunk_starts, prompt_ids)
        slot.chunk_starts = [s for s in slot.chunk_starts if s < reuse]
        return reuse

    def _pick_slot(self, prompt_ids: list[int]) -> Slot:
        """The free row holding the longest prefix of the prompt, else the lowest free row
        (low rows keep the decoding rows contiguous, so a step spans few idle rows)."""
        free = [s for s in self.slots if s.request is None]
        best = max(free, key=lambda s: (common_prefix_length(s.cached, prompt_ids), -s.row))
        return best if common_prefix_length(best.cached, prompt_ids) >= MIN_REUSE else free[0]

    def _free(self, slot: Slot, error: BaseException | None = None) -> None:
        """End the row's request (with `error`, or its last chunks) and free the row. Never
        raises: a failure while finishing becomes the request's error."""
        request, seq = slot.request, slot.seq
        slot.request = slot.seq = None
        if request is None:
            return
        try:
            if error is None and seq is None:
                error = WarmloadError("internal error: the request had no sequence state")
            if error is not None:
                request.emit(error)
            elif not request.cancelled.is_set():
                for chunk in seq.finish():
                    request.emit(chunk)
        except Exception as exc:
            log.exception("finishing a request failed")
            _emit_quietly(request, exc)
        finally:
            _emit_quietly(request, None)

    def fail_all(self, error: BaseException) -> None:
        """After an unexpected failure of a step: end every request (waiting or running) with
        `error`, free every row and forget every row's K/V (it may be half-written). Never
        raises, so the runner can go on serving new requests."""
        while self.waiting:
            _end(self.waiting.popleft(), error)
        for slot in self.slots:
            slot.cached, slot.chunk_starts, slot.prefill_pos, slot.clean_to = [], [], 0, 0
            if slot.request is not None:
                self._free(slot, error)

    def _guard(self, slots: list[Slot], fn: Callable[..., None], *args: Any) -> None:
        """Run a forward pass; if it fails, those slots' requests fail, and only they."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("batched step failed for %d sequence(s)", len(slots))
            for slot in slots:
                if slot.request is not None:
                    slot.cached, slot.chunk_starts = [], []  # its K/V may be half-written
                    self._free(slot, exc)

    # -- forward passes -----------------------------------------------------------------------
    def _takes_ragged_steps(self) -> bool:
        """Whether the model runs this cache's steps as ragged passes (fused.ragged_plan), with
        room for every row and a step's prompt tokens."""
        plan = fused.ragged_plan(self.model, self.cache)
        room = len(self.slots) + self.prefill_chunk + fused.CHUNK_TOKENS
        return plan is not None and room <= plan.chunk_tokens

    def _chunk_stop(self, slot: Slot) -> int:
        """Where the row's next prompt chunk ends."""
        assert slot.request is not None
        alone = not any(s.decoding for s in self.slots)
        size = max(self.prefill_chunk, SOLO_PREFILL_CHUNK) if alone else self.prefill_chunk
        stop = min(slot.prefill_pos + size, len(slot.request.prompt_ids))
        return min(stop, slot.boundary) if slot.prefill_pos < slot.boundary else stop

    def _ragged_pass(self, decoding: list[Slot], short: list[tuple[Slot, int]]) -> None:
        """Every decoding row's next token and the joining rows' short prompt chunks (up to
        `stop`) in one fused pass, each token at its own row and position (no rows in between
        take part); the decoding rows and the prompts that end here sample."""
        tokens: list[int] = []
        rows: list[int] = []
        positions: list[int] = []
        sampled: list[tuple[Slot, int]] = []  # (slot, index of the token whose logits it takes)
        for slot in decoding:
            assert slot.seq is not None
            sampled.append((slot, len(tokens)))
            tokens.append(slot.seq.history[-1])
            rows.append(slot.row)
            positions.append(len(slot.cached))
        spans: dict[int, int] = {}  # row -> index of its chunk's first token
        for slot, stop in short:
            assert slot.request is not None
            prompt, start = slot.request.prompt_ids, slot.prefill_pos
            spans[slot.row] = len(tokens)
            tokens += prompt[start:stop]
            rows += [slot.row] * (stop - start)
            positions += range(start, stop)
            if stop == len(prompt):
                sampled.append((slot, len(tokens) - 1))
        as_long = [torch.tensor(v, dtype=torch.long) for v in (tokens, rows, positions)]
        hidden = fused.forward_ragged(self.model, as_long[0], self.cache, as_long[1], as_long[2])
        self.steps += 1
        for slot in decoding:
            assert slot.seq is not None
            slot.chunk_starts.append(len(slot.cached))  # a decode step is a pass of its own
            slot.cached.append(slot.seq.history[-1])
            slot.clean_to = max(slot.clean_to, len(slot.cached))
        for slot, stop in short:
            assert slot.request is not None and slot.seq is not None
            if slot.request.prompt_logprobs:  # echo: the chunk's tokens' logits too
                first = spans[slot.row]
                logits = self.model.compute_logits(hidden[first : first + stop - slot.prefill_pos])
                slot.seq.score_prompt(logits.float(), slot.prefill_pos)
            slot.chunk_starts.append(slot.prefill_pos)
            slot.prefill_pos, slot.cached = stop, slot.request.prompt_ids[:stop]
            slot.clean_to = max(slot.clean_to, stop)
            self._passed(slot, stop)
        logits = self.model.compute_logits(hidden[[i for _, i in sampled]]).float()
        for (slot, _), row_logits in zip(sampled, logits):
            self._sample(slot, row_logits)

    def _prefill_chunk(self, slot: Slot) -> None:
        """One chunk of the row's prompt into its KV row, alone; the last one samples."""
        assert slot.request is not None
        prompt, start = slot.request.prompt_ids, slot.prefill_pos
        stop = self._chunk_stop(slot)
        cache = self.cache.rows(slot.row, slot.row + 1)
        hidden = self.model(torch.tensor([prompt[start:stop]], dtype=torch.long), cache, start)
        self.steps += 1
        slot.prefill_pos, slot.cached = stop, prompt[:stop]
        slot.chunk_starts.append(start)
        slot.clean_to = max(slot.clean_to, stop)
        self._passed(slot, stop)
        if slot.request.prompt_logprobs:
            assert slot.seq is not None
            logits = self.model.compute_logits(hidden)[0].float()  # (T, vocab)
            slot.seq.score_prompt(logits, start)
            if stop == len(prompt):
                self._sample(slot, logits[-1])
        elif stop == len(prompt):
            self._sample(slot, self.model.compute_logits(hidden[:, -1:])[0, -1].float())

    def _decode(self, decoding: list[Slot]) -> None:
        """One token for every decoding row, in one forward pass over rows lo..hi."""
        lo, hi = min(s.row for s in decoding), max(s.row for s in decoding) + 1
        if len(decoding) == 1:  # the plain single-sequence path (what Engine runs)
            slot = decoding[0]
            pos = len(slot.cached)
            hidden = self.model(self._last_tokens(decoding), self.cache.rows(lo, hi), pos)
            slot.clean_to = max(slot.clean_to, pos + 1)
        else:
            positions = self._positions(lo, hi)
            self._zero_unwritten(lo, hi, int(positions.max()) + 1)
            tokens = torch.zeros((hi - lo, 1), dtype=torch.long)
            tokens[[s.row - lo for s in decoding], 0] = self._last_tokens(decoding)[:, 0]
            hidden = self.model(tokens, self.cache.rows(lo, hi), positions)
            hidden = hidden[[s.row - lo for s in decoding]]
        self.steps += 1
        logits = self.model.compute_logits(hidden)[:, -1].float()  # (len(decoding), vocab)
        for slot, row_logits in zip(decoding, logits):
            assert slot.seq is not None
            slot.chunk_starts.append(len(slot.cached))  # a decode step is a pass of its own
            slot.cached.append(slot.seq.history[-1])
            self._sample(slot, row_logits)

    @staticmethod
    def _last_tokens(decoding: list[Slot]) -> torch.Tensor:
        return torch.tensor([[s.seq.history[-1]] for s in decoding], dtype=torch.long)

    def _positions(self, lo: int, hi: int) -> torch.Tensor:
        """Each row's write position this step. A decoding row writes its next token; a row in
        the span that is not decoding writes a dummy token where nothing it keeps lives: a
        joining row at its next prompt position (the next chunk overwrites it), a free row
        right after its kept tokens, cut to the decoding rows' end so it adds no keys."""
        span = self.slots[lo:hi]
        top = max(len(s.cached) for s in span if s.decoding)
        positions = []
        for slot in span:
            if slot.decoding:
                positions.append(len(slot.cached))
            elif slot.prefilling:
                positions.append(slot.prefill_pos)
            else:
                slot.cached = slot.cached[: min(len(slot.cached), top)]
                slot.chunk_starts = [s for s in slot.chunk_starts if s < len(slot.cached)]
                positions.append(len(slot.cached))
        return torch.tensor(positions, dtype=torch.long)

    def _zero_unwritten(self, lo: int, hi: int, end: int) -> None:
        """Masked keys are still multiplied in: every row must hold finite numbers up to end
        (the cache starts as torch.empty; zeroing lazily keeps unused rows untouched). Zeroes
        ZERO_AHEAD positions more at a time, so this is not a fill per row and step."""
        for slot in self.slots[lo:hi]:
            if slot.clean_to < end:
                stop = min(self.ctx, end + ZERO_AHEAD)
                self.cache.clear(slot.row, slot.clean_to, stop)
                slot.clean_to = stop

    def _sample(self, slot: Slot, logits: torch.Tensor) -> None:
        """Sample the row's next token, stream it, and free the row when the sequence ends."""
        request, seq = slot.request, slot.seq
        assert request is not None and seq is not None
        if seq.first_token_at is None:
            seq.prefilled()  # the prompt's last token just went through the model
        if seq.done:  # max_tokens=0 (echo scored the prompt): nothing to sample
            self._free(slot)
            return
        try:
            chunk = seq.step(logits)
        except Exception as exc:  # this request's options or tokens: its failure only
            log.exception("sampling failed")
            self._free(slot, exc)
            return
        if chunk is not None:
            request.emit(chunk)
        if seq.done:
            self._free(slot)
