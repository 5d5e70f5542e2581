"""One runner per backend, each measured the same way: load, prefill a prompt of given token
ids from an empty context (time to its first token), and decode n tokens greedily.

Peers: llama.cpp through llama-cpp-python and transformers' GGUF loading. They are optional
(`make bench-peers`) and never runtime dependencies; they get the same token ids as warmload,
so the comparison is about the engines, not the tokenizers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path


class WarmloadRunner:
    name = "warmload"

    def __init__(self, path: Path, threads: int, ctx: int, load_mode: str = "mmap") -> None:
        self.path, self.threads, self.ctx, self.load_mode = path, threads, ctx, load_mode
        self.engine = None

    def load(self) -> float:
        import warmload

        started = time.perf_counter()
        self.engine = warmload.load(
            self.path, threads=self.threads, ctx=self.ctx, load_mode=self.load_mode
        )
        return time.perf_counter() - started

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)

    def prefill(self, ids: Sequence[int]) -> float:
        self.engine.reset()
        done = self.engine.generate(list(ids), max_tokens=1, temperature=0)
        return done.timings.ttft_seconds

    def decode(self, ids: Sequence[int], n: int) -> float:
        """Seconds for n tokens after the first (the first comes from the prefill)."""
        self.engine.reset()
        done = self.engine.generate(list(ids), max_tokens=n + 1, temperature=0, stop=())
        if done.timings.generated_tokens < n + 1:
            raise RuntimeError(f"decode stopped after {done.timings.generated_tokens} tokens")
        return done.timings.generate_seconds

    def close(self) -> None:
        from warmload.memstats import release_freed_memory

        self.engine.close()
        self.engine = None
        release_freed_memory()  # as the server's unload: the next load starts from a clean heap


class LlamaCppRunner:
    name = "llama.cpp"

    def __init__(self, path: Path, threads: int, ctx: int, load_mode: str = "mmap") -> None:
        self.path, self.threads, self.ctx = path, threads, ctx
        self.use_mmap = load_mode == "mmap"
        self.llm = None

    def load(self) -> float:
        from llama_cpp import Llama

        started = time.perf_counter()
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=self.ctx,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            n_batch=512,
            use_mmap=self.use_mmap,
            verbose=False,
        )
        return time.perf_counter() - started

    def prefill(self, ids: Sequence[int]) -> float:
        self.llm.reset()
        self.llm._ctx.kv_cache_clear() if hasattr(self.llm, "_ctx") else None
        started = time.perf_counter()
        self.llm.eval(list(ids))
        self.llm.sample(temp=0.0)
        return time.perf_counter() - started

    def decode(self, ids: Sequence[int], n: int) -> float:
        self.prefill(ids)
        token = self.llm.sample(temp=0.0)
        started = time.perf_counter()
        for _ in range(n):
            self.llm.eval([token])
            token = self.llm.sample(temp=0.0)
        return time.perf_counter() - started

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None


class TransformersRunner:
    name = "transformers"

    def __init__(self, path: Path, threads: int, ctx: int, load_mode: str = "mmap") -> None:
        self.path, self.threads, self.ctx = path, threads, ctx
        self.model = None

    def load(self) -> float:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(self.threads)
        started = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(
            str(self.path.parent), gguf_file=self.path.name, dtype=torch.float32
        )
        self.model.eval()
        return time.perf_counter() - started

    def prefill(self, ids: Sequence[int]) -> float:
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model(torch.tensor([list(ids)]), use_cache=True)
            out.logits[0, -1].argmax().item()
        return time.perf_counter() - started

    def decode(self, ids: Sequence[int], n: int) -> float:
        import torch

        with torch.inference_mode():
            out = self.model(torch.tensor([list(ids)]), use_cache=True)
            past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
            started = time.perf_counter()
            for _ in range(n):
                out = self.model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
            return time.perf_counter() - started

    def close(self) -> None:
        self.model = None


class LlamaCppAvx2Runner(LlamaCppRunner):
    """llama-cpp-python built for AVX2/FMA/F16C only (`make bench-peers`, .peers/llama-avx2,
    put first on the worker's PYTHONPATH): the peer of warmload's avx2 kernel variant."""

    name = "llama.cpp-avx2"

    def load(self) -> float:
        import llama_cpp

        folder = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
        where = Path(llama_cpp.__file__).resolve()
        if not folder or not where.is_relative_to(Path(folder).resolve()):
            raise RuntimeError(f"llama.cpp-avx2 imported llama_cpp from {where}, not {folder}")
        return super().load()


RUNNERS = {
    r.name: r for r in (WarmloadRunner, LlamaCppRunner, LlamaCppAvx2Runner, TransformersRunner)
}
