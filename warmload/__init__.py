"""warmload: a local LLM runtime that gets GGUF and SafeTensors models to the first token fast.

Public API only. `import warmload` stays light (no torch): heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from warmload.config import GenerationConfig, LoadConfig
from warmload.errors import (
    CheckpointError,
    ModelLoadError,
    RequestError,
    TokenizerError,
    UnsupportedError,
    WarmloadError,
    WeightMismatchError,
)

if TYPE_CHECKING:
    from warmload.engine import Engine
    from warmload.formats.checkpoint import Checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Engine",
    "GenerationConfig",
    "LoadConfig",
    "ModelLoadError",
    "RequestError",
    "TokenizerError",
    "UnsupportedError",
    "WarmloadError",
    "WeightMismatchError",
    "__version__",
    "dequantize",
    "load",
    "load_tokenizer",
    "open_checkpoint",
]


def open_checkpoint(path: Any, load_mode: str = "mmap") -> Checkpoint:
    """Open a GGUF or SafeTensors file (or sharded folder): header only, no tensor bytes read."""
    from warmload.formats.open import open_checkpoint as _open

    return _open(path, load_mode=load_mode)


def dequantize(raw: Any, ggml_type: str, shape: Any, dtype: Any = None) -> Any:
    """Raw GGML bytes (buffer, numpy or torch uint8) -> torch tensor of `shape` (float32)."""
    from warmload.quant.dequant import dequantize as _dequantize

    return _dequantize(raw, ggml_type, shape, dtype=dtype)


def load(path: Any = None, **load_options: Any) -> Engine:
    """Load a model (a path or a packaged model's name; None: the default) into an Engine."""
    from warmload.engine import load_engine

    return load_engine(path, **load_options)


def load_tokenizer(path: Any) -> Any:
    """Build only the tokenizer of a GGUF file (works on vocab-only files)."""
    from warmload.tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from warmload.engine import Engine

        return Engine
    raise AttributeError(f"module 'warmload' has no attribute {name!r}")
