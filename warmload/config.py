"""Frozen, validated configuration objects. argparse stops at cli.py and JSON at server/:
library functions take these objects (or their fields as keywords)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from warmload.errors import RequestError

LOAD_MODES = ("mmap", "memory", "read")
WARMUP_MODES = ("none", "willneed", "populate", "read", "auto")
QUANTIZE_CACHE_BYTES = 32 << 30  # default bound of the quantized-weight cache


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How a model file becomes a runnable model.

    load_mode: "mmap" maps the file (zero-copy, default); "memory" reads the whole file into one
    buffer; "read" preads each tensor into its own buffer.
    packed: on the CPU, keep quantized (and F16/BF16) matrices in their GGML blocks and multiply
    them with the packed kernels (default); False dequantizes them to float32 at load.
    quantize: a file type (Q8_0, Q4_K_M, ...) an F32/F16/BF16 model is quantized to at load;
    the result is cached (loader/quantize_at_load.py), so later loads map it.
    """

    load_mode: str = "mmap"
    threads: int | None = None  # None: physical cores (or the tuned value)
    ctx: int | None = None  # None: the model's context, capped at DEFAULT_MAX_CTX
    device: str = "cpu"
    n_gpu_layers: int = 0
    mlock: bool = False
    warmup: str = "none"
    warmup_sync: bool = False
    lazy: bool = False
    use_cache: bool = True  # warmload's caches (tokenizer merges, tuned threads)
    packed: bool = True
    quantize: str | None = None  # e.g. "Q4_K_M": quantize an F32/F16/BF16 model at load, cached
    quantize_cache_bytes: int = QUANTIZE_CACHE_BYTES  # that cache's bound (LRU)
    check_tensors: bool = False  # scan float values and block scales for NaN/Inf (one pass)
    prime: bool = True  # pay a first forward's one-time costs in the background after load
    prompt_cache: str = "auto"  # "auto": cache_dir()/prompts, "off", or a folder (prompt_cache)
    prompt_cache_max_gb: float = 2.0  # least recently used entries go beyond this

    def __post_init__(self) -> None:
        if self.quantize is not None and (not isinstance(self.quantize, str) or not self.quantize):
            raise RequestError(f"quantize must name a type, not {self.quantize!r}", "quantize")
        if self.quantize_cache_bytes < 0:
            raise RequestError("quantize_cache_bytes must be >= 0", "quantize_cache_bytes")
        if not self.prompt_cache:
            raise RequestError("prompt_cache must be 'auto', 'off' or a folder", "prompt_cache")
        if not self.prompt_cache_max_gb > 0:
            raise RequestError(
                f"prompt_cache_max_gb must be > 0, not {self.prompt_cache_max_gb}",
                "prompt_cache_max_gb",
            )
        if self.load_mode not in LOAD_MODES:
            raise RequestError(
                f"load_mode must be one of {', '.join(LOAD_MODES)}, not {self.load_mode!r}",
                "load_mode",
            )
        if self.warmup not in WARMUP_MODES:
            raise RequestError(
                f"warmup must be one of {', '.join(WARMUP_MODES)}, not {self.warmup!r}", "warmup"
            )
        if self.threads is not None and self.threads < 1:
            raise RequestError(f"threads must be >= 1, not {self.threads}", "threads")
        if self.ctx is not None and self.ctx < 1:
            raise RequestError(f"ctx must be >= 1, not {self.ctx}", "ctx")

    @classmethod
    def from_options(cls, **options: object) -> LoadConfig:
        """Build from keyword options, naming any that is not a LoadConfig field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise RequestError(
                f"unknown load option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                unknown[0],
            )
        return cls(**options)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Sampling and stopping options; defaults follow llama.cpp's common sampler defaults."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens >= 0, "max_tokens", "must be >= 0"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty", "must be > 0"),
            (self.repeat_last_n >= -1, "repeat_last_n", "must be >= -1 (-1: whole context)"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise RequestError(f"{name} {rule}, got {getattr(self, name)!r}", name)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop must hold non-empty strings", "stop")


def cache_dir() -> Path:
    """Root of warmload's on-disk caches: $WARMLOAD_CACHE_DIR, else ~/.cache/warmload."""
    env = os.environ.get("WARMLOAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "warmload"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """`warmload serve`: where to listen, which models, and the model cache's limits."""

    models: tuple[tuple[str, str], ...] = ()  # (id, path or packaged name), first is default
    models_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_models: int = 2
    memory_budget_bytes: int | None = None
    keep_alive_seconds: float = 300.0  # < 0: forever, 0: unload after each request
    api_key: str | None = None
    no_wait: bool = False  # 503 + Retry-After instead of waiting for a loading model
    max_body_bytes: int = 4 << 20
    max_stop_strings: int = 8
    max_batch: int = 8  # sequences decoded together per model
    load: LoadConfig = field(default_factory=LoadConfig)
    aliases: tuple[tuple[str, str], ...] = ()  # (name a client sends, served model id)
    fallback_model: str | None = None  # answers requests naming an unknown model

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise RequestError(f"port must be in 0..65535, not {self.port}", "port")
        if self.max_models < 1:
            raise RequestError(f"max_models must be >= 1, not {self.max_models}", "max_models")
        if self.max_batch < 1:
            raise RequestError(f"max_batch must be >= 1, not {self.max_batch}", "max_batch")
        ids = [model_id for model_id, _ in self.models]
        if len(set(ids)) != len(ids):
            raise RequestError(f"model ids must be unique, got {ids}", "models")
