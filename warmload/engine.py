"""Engine: a loaded model, its tokenizer and chat template, and one KV cache kept warm.

Generation reuses the cache across calls: a new prompt that starts with tokens already in the
cache (the previous turn of a chat, a shared system prompt) prefills only what is new, the way
llama.cpp's server reuses its slot's prompt cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from warmload.chat import ChatTemplate
from warmload.config import GenerationConfig, LoadConfig
from warmload.errors import ContextOverflowError, RequestError
from warmload.prompt_cache import (
    MIN_PREFIX_TOKENS,
    PromptCache,
    memory_adapter,
    open_prompt_cache,
)
from warmload.sequence import (  # noqa: F401  (re-exported: the engine's public types)
    Chunk,
    Completion,
    LogitsProcessor,
    SequenceState,
    Timings,
    token_logprobs,
)
from warmload.threads import default_threads
from warmload.tokenizer import Tokenizer, build_tokenizer

DEFAULT_MAX_CTX = 4096  # KV cache cap when neither -c nor the model asks for less
PREFILL_CHUNK = 512  # prompt tokens per forward pass (bounds attention memory)
# Engine.prime's passes: a decode step, a short prompt (integer products), a decode step after
# it. Not a long prompt: its GEMM path costs the same on every call (no first-call cost to pay),
# and ~1 s of it at load would cost more than it saves.
PRIME_PASSES = (1, 20, 1)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_prefix(
    cached: Sequence[int], chunk_starts: Sequence[int], prompt: Sequence[int]
) -> int:
    """How many cached positions a new prompt may keep: its common prefix with the cache, less
    the last prompt token (it must yield logits), cut back to the start of the forward pass
    that computed it. Positions are then only ever recomputed whole-pass by whole-pass, exactly
    as before, so a repeated request gets the very same bits: a product's arithmetic depends on
    its chunk's length (decode steps and short chunks take 8-bit activations, long chunks
    float32; see quant.matmul), so splitting a chunk could change the rounding."""
    reuse = min(common_prefix_length(cached, prompt), len(prompt) - 1)
    return max((s for s in chunk_starts if s <= reuse), default=0)


def generation_config(options: dict[str, Any]) -> GenerationConfig:
    known = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise RequestError(f"unknown generation option(s): {', '.join(unknown)}", unknown[0])
    return GenerationConfig(**options)


class Engine:
    """Model + tokenizer + one warm KV cache. Calls are serialised by a lock."""

    def __init__(
        self,
        model: Any,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        *,
        path: Path,
        checkpoint: Any,
        load_config: LoadConfig,
        load_stats: Any,
        load_seconds: float,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.path = path
        self.checkpoint = checkpoint
        self.load_config = load_config
        self.load_stats = load_stats
        self.load_seconds = load_seconds
        model_ctx = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_CTX)
        self.ctx = load_config.ctx or min(model_ctx, DEFAULT_MAX_CTX)
        self._cache = model.new_cache(self.ctx, batch_size=1)
        self._cache_ids: list[int] = []  # tokens whose K/V sit in the cache, in order
        self._chunk_starts: list[int] = []  # first position of each forward pass that made them
        self._lock = threading.Lock()
        self._prompt_cache = None
        if load_config.use_cache:
            self._prompt_cache = open_prompt_cache(
                load_config.prompt_cache, path, model.config, load_config.prompt_cache_max_gb
            )
        # rendered chats' shared prefix lengths, by prompt (see prompt_boundary), most recent last
        self._chat_prefixes: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._saves: list[threading.Thread] = []
        self._prefix_lock = threading.Lock()
        self.prime_seconds = 0.0  # spent by prime() during load

    # -- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int], decode_from: int | None = None) -> torch.Tensor:
        """float32 next-token logits at every position: shape (len(token_ids), vocab).

        Positions before `decode_from` go through the model in prompt-sized chunks; from
        `decode_from` on, one token per forward pass, as generation computes a prompt and its
        continuation (decode_from=len(prompt)). The kernels' arithmetic depends on a pass's
        length (quant.matmul.project_packed), so the two ways differ in the last digits."""
        ids = self._check_ids(token_ids)
        decode_from = len(ids) if decode_from is None else max(1, min(decode_from, len(ids)))
        cache = self.model.new_cache(len(ids), batch_size=1)
        spans = [
            (s, min(s + PREFILL_CHUNK, decode_from)) for s in range(0, decode_from, PREFILL_CHUNK)
        ]
        spans += [(s, s + 1) for s in range(decode_from, len(ids))]
        rows = []
        for start, stop in spans:
            chunk = torch.tensor([ids[start:stop]], dtype=torch.long)
            hidden = self.model(chunk, cache, start)
            rows.append(self.model.compute_logits(hidden)[0].float())
        return torch.cat(rows, dim=0)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], **options: Any) -> Completion:
        for chunk in self.stream_chunks(prompt, **options):
            if chunk.completion is not None:
                return chunk.completion
        raise AssertionError("stream_chunks ended without a completion")

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """Yields text pieces as they are made (never broken UTF-8, never a stop string)."""
        for chunk in self.stream_chunks(prompt, **options):
            if chunk.text:
                yield chunk.text

    def chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> Completion:
        return self.generate(self.chat_prompt(messages), **options)

    def stream_chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> Iterator[str]:
        return self.stream(self.chat_prompt(messages), **options)

    def chat_prompt(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Token ids of the rendered chat, with BOS exactly once; `tools` (OpenAI's function
        definitions) go to the template's `tools` variable, as Hugging Face passes them."""
        text = self.template.render(messages, add_generation_prompt=True, tools=tools)
        ids = self.encode_rendered(text)
        if self._prompt_cache is not None:
            shared = len(self._shared_chat_prefix(messages, tools, ids))
            with self._prefix_lock:
                self._chat_prefixes[tuple(ids)] = shared
                while len(self._chat_prefixes) > 256:
                    self._chat_prefixes.popitem(last=False)
        return ids

    def _shared_chat_prefix(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None, ids: list[int]
    ) -> list[int]:
        """The tokens any next message would share with this chat (system prompt, earlier
        turns): the common prefix with the same chat whose last message says something else."""
        if not messages or not isinstance(messages[-1].get("content"), str):
            return []
        other = [*messages[:-1], {**messages[-1], "content": "\x01" + messages[-1]["content"]}]
        try:
            text = self.template.render(other, add_generation_prompt=True, tools=tools)
        except Exception:  # noqa: BLE001 - a template may refuse odd content: no boundary
            return []
        return ids[: common_prefix_length(ids, self.encode_rendered(text))]

    def encode_rendered(self, text: str) -> list[int]:
        """Encode template output: special tokens in it are parsed; BOS is added only when the
        template did not write it itself."""
        ids = self.tokenizer.encode(text, add_special=False, parse_special=True)
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special=True, parse_special=False)
        return self._check_ids(prompt)

    def stream_chunks(
        self, prompt: str | Sequence[int], *, logprobs: int | None = None, **options: Any
    ) -> Iterator[Chunk]:
        """The generation loop; the last chunk carries the Completion. `logprobs`: also give
        each token's log-probability and that many top alternatives (OpenAI's logprobs)."""
        cfg = generation_config(options)
        started = time.perf_counter()
        prompt_ids = self.encode_prompt(prompt)
        if not prompt_ids:
            raise RequestError("the prompt is empty (no tokens)", "prompt")
        if len(prompt_ids) >= self.ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {self.ctx}; "
                f"shorten it or raise the context (-c / ctx=)",
                "prompt",
            )
        with self._lock, torch.inference_mode():
            yield from self._generate(prompt_ids, cfg, started, logprobs)

    def _generate(
        self, prompt_ids: list[int], cfg: GenerationConfig, started: float, logprobs: int | None
    ) -> Iterator[Chunk]:
        seq = SequenceState(self.tokenizer, prompt_ids, cfg, self.ctx, started, logprobs)
        seq.timings.load_seconds = self.load_seconds
        logits = self._prefill(prompt_ids, seq.timings)
        seq.prefilled()
        while not seq.done:
            chunk = seq.step(logits)
            if chunk is not None:
                yield chunk
            if not seq.done:
                logits = self._forward_last([seq.history[-1]], len(seq.history) - 1)
        # The last sampled token was never fed through the model: its K/V is not cached.
        # (Set before the last chunk: generate() stops reading at the Completion.)
        self._cache_ids = seq.cached_ids()
        self._chunk_starts += range(len(prompt_ids), len(self._cache_ids))  # decode steps
        yield from seq.finish()

    @property
    def prompt_cache(self) -> PromptCache | None:
        """The on-disk prompt cache (None: off)."""
        return self._prompt_cache

    def prompt_boundary(self, prompt_ids: Sequence[int]) -> int:
        """Where the prompt's shareable prefix ends (0: none): for a chat rendered by
        chat_prompt, the part any next message shares (system prompt, earlier turns), else the
        last whole prefill chunk. Prefill splits a pass there, so the state saved at it is the
        one a later process computes too."""
        if self._prompt_cache is None:
            return 0
        with self._prefix_lock:
            shared = self._chat_prefixes.get(tuple(prompt_ids))
        if shared is None:
            shared = (len(prompt_ids) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
        return shared if MIN_PREFIX_TOKENS <= shared < len(prompt_ids) else 0

    def save_prefix_job(self, prefix: Sequence[int], memory: Any, starts: Sequence[int]) -> None:
        """Snapshot a sequence memory (row 0 of `memory`) after `prefix` now; write it to the
        prompt cache in a (non-daemon) thread. Shared with the batch runner."""
        cache = self._prompt_cache
        adapter = memory_adapter(memory)
        if cache is None or cache.has(prefix, adapter):
            return
        job = cache.prepare(prefix, adapter, list(starts))
        if job is not None:
            thread = threading.Thread(target=job, name="warmload-prompt-cache-save")
            thread.start()
            with self._prefix_lock:
                self._saves = [t for t in self._saves if t.is_alive()] + [thread]

    def _prefill(self, prompt_ids: list[int], timings: Timings) -> torch.Tensor:
        """Runs the uncached part of the prompt; returns the last position's logits."""
        reuse = reusable_prefix(self._cache_ids, self._chunk_starts, prompt_ids)
        boundary = self.prompt_boundary(prompt_ids)
        if reuse < boundary:
            reuse = self._restore_prefix(prompt_ids[:boundary], reuse)
        timings.cached_tokens = reuse
        self._cache_ids = prompt_ids[:reuse]
        self._chunk_starts = [s for s in self._chunk_starts if s < reuse]
        boundary = boundary if boundary > reuse else reuse  # nothing to save when held
        starts = [*range(reuse, boundary, PREFILL_CHUNK)]
        starts += range(boundary, len(prompt_ids), PREFILL_CHUNK)
        ends = [*starts[1:], len(prompt_ids)]
        logits = None
        for start, stop in zip(starts, ends):
            logits = self._forward_last(prompt_ids[start:stop], start)
            self._cache_ids = prompt_ids[:stop]
            self._chunk_starts.append(start)
            if stop == boundary:
                self._save_prefix(prompt_ids[:boundary])
        assert logits is not None
        return logits

    def _restore_prefix(self, prefix: list[int], reuse: int) -> int:
        """The longest saved prefix of `prefix` when longer than `reuse`, loaded into the cache."""
        assert self._prompt_cache is not None
        memory = memory_adapter(self._cache)
        found, starts = self._prompt_cache.lookup(prefix, memory, longer_than=reuse)
        if found <= reuse:
            return reuse
        self._cache_ids, self._chunk_starts = prefix[:found], starts
        return found

    def _save_prefix(self, prefix: list[int]) -> None:
        self.save_prefix_job(prefix, self._cache, self._chunk_starts)

    def _join_saves(self) -> None:
        """Wait for pending prompt-cache writes (at close; tests)."""
        with self._prefix_lock:
            saves, self._saves = self._saves, []
        for thread in saves:
            thread.join()

    def _forward_last(self, token_ids: list[int], start_pos: int) -> torch.Tensor:
        tokens = torch.tensor([token_ids], dtype=torch.long)
        hidden = self.model(tokens, self._cache, start_pos)
        logits = self.model.compute_logits(hidden[:, -1:])[0, -1].float()
        if not bool(torch.isfinite(logits).all()):  # NaN weights: stop and name them
            from warmload.loader.finite import nonfinite_logits_error

            raise nonfinite_logits_error(self.path, start_pos + len(token_ids) - 1)
        return logits

    def prime(self) -> float:
        """Pay now what a first request would (decode plans, the kernels' thread team, scratch
        buffers and their first touch, lazy imports in sampling, allocator growth): forward
        passes over throw-away tokens, under the lock, then the cache is forgotten. Returns
        the seconds spent. load_engine runs it before returning (LoadConfig.prime): ~0.1 s."""
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            vocab = self.tokenizer.vocab_size
            ids = [(1000 + 7 * i) % vocab for i in range(sum(PRIME_PASSES))]
            pos, logits = 0, None
            for n in PRIME_PASSES:
                if pos + n >= self.ctx:
                    break
                logits = self._forward_last(ids[pos : pos + n], pos)
                pos += n
            if logits is not None:
                seq = SequenceState(
                    self.tokenizer, ids[:pos], GenerationConfig(seed=0), self.ctx, started
                )
                seq.step(logits)  # the sampler's first call
            self._cache_ids, self._chunk_starts = [], []
        return time.perf_counter() - started

    def reset(self) -> None:
        """Forget the cached conversation (the next call prefills from scratch)."""
        with self._lock:
            self._cache_ids, self._chunk_starts = [], []

    def _check_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in token_ids]
        vocab = self.tokenizer.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        if not ids:
            raise RequestError("no token ids given", "prompt")
        return ids

    def residency(self) -> float:
        """Fraction (0..1) of the model file's bytes now resident in the page cache."""
        from warmload.loader.warm import residency

        return residency(self.checkpoint)

    def close(self) -> None:
        self._join_saves()
        self._cache = None
        self.checkpoint.close()


def model_nbytes(path: Path) -> int:
    """Bytes of a model file, or of the files of a model folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def load_engine(path: Any = None, **load_options: Any) -> Engine:
    """Resolve, open, load and wrap a model; `load_options` are LoadConfig fields."""
    from warmload.catalog import resolve_model_path
    from warmload.formats.open import open_checkpoint
    from warmload.loader import load_model

    started = time.perf_counter()
    progress = load_options.pop("progress", None)  # callback(done_bytes, total_bytes)
    cfg = LoadConfig.from_options(**load_options)
    model_path = resolve_model_path(path)
    if cfg.quantize is not None:  # the cached quantized GGUF (made now on a miss)
        from warmload.loader.quantize_at_load import resolve_load_path

        model_path = resolve_load_path(model_path, cfg, progress)
    if cfg.threads is None:  # tuned for this machine and model size, else physical cores
        tuned_for = model_nbytes(model_path) if cfg.use_cache else None
        cfg = replace(cfg, threads=default_threads(tuned_for))
    torch.set_num_threads(cfg.threads)
    checkpoint = open_checkpoint(model_path, load_mode=cfg.load_mode)
    try:
        model, stats = load_model(checkpoint, cfg, progress=progress)
        tokenizer = build_tokenizer(checkpoint.metadata, use_cache=cfg.use_cache)
        template = ChatTemplate.from_metadata(checkpoint.metadata, tokenizer)
    except BaseException:
        checkpoint.close()
        raise
    engine = Engine(
        model,
        tokenizer,
        template,
        path=model_path,
        checkpoint=checkpoint,
        load_config=cfg,
        load_stats=stats,
        load_seconds=time.perf_counter() - started,
    )
    if cfg.prime:  # synchronous: callers may use engine.model at once, from any thread
        engine.prime_seconds = engine.prime()
    return engine
