"""Checked access to hyperparameters: GGUF `{arch}.*` metadata and config.json fields.

Every architecture reads its values through GGUFKeys / HFFields, which check the type and the
range of each value as it is read and raise CheckpointError naming the file, the key and the
value (never a TypeError, ZeroDivisionError or assert from file data); check_decoder then checks
what the values must satisfy together (heads divisible, head_dim even, ...). Reference for the
keys: llama.cpp src/llama-arch.cpp LLM_KV_* and gguf-py constants.py Keys; for config.json,
each transformers <Arch>Config. No torch: the converter reads configs too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError

_MISSING = object()
MAX_DIM = 1 << 24  # hidden sizes, heads, vocabularies: far beyond any model, far below int32
MAX_CONTEXT = 1 << 31
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # layers.ACTIVATIONS (the kernels run both)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(value: Any, where: str, key: str, minimum: int = 1, maximum: int = MAX_DIM) -> int:
    """An integer in minimum..maximum (bools, floats and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CheckpointError(
            f"{where}: {key} must be an integer, not {type(value).__name__} {_describe(value)}"
        )
    if not minimum <= int(value) <= maximum:
        raise CheckpointError(
            f"{where}: {key} = {int(value)} is out of range (want {minimum}..{maximum})"
        )
    return int(value)


def check_float(value: Any, where: str, key: str, minimum: float = 0.0) -> float:
    """A finite number >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise CheckpointError(
            f"{where}: {key} must be a number, not {type(value).__name__} {_describe(value)}"
        )
    number = float(value)
    if not math.isfinite(number) or number < minimum:
        raise CheckpointError(f"{where}: {key} = {number} is invalid (want a finite >= {minimum})")
    return number


def check_positive_float(value: Any, where: str, key: str) -> float:
    """A finite number > 0 (rope bases, scaling factors)."""
    number = check_float(value, where, key)
    if number <= 0:
        raise CheckpointError(f"{where}: {key} = {number} is invalid (want a finite > 0)")
    return number


class _Values:
    """Typed getters over one source of named values; subclasses say how a key is found."""

    where: str
    kind = "key"  # "metadata key" / "field" in messages

    def raw(self, key: str) -> Any:  # _MISSING when absent
        raise NotImplementedError

    def name(self, key: str) -> str:
        return key

    def get(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key)
        if value is _MISSING:
            if default is _MISSING:
                raise CheckpointError(f"{self.where}: {self.kind} {self.name(key)!r} is missing")
            return default
        return value

    def integer(
        self, key: str, default: Any = _MISSING, minimum: int = 1, maximum: int = MAX_DIM
    ) -> int:
        value = self.get(key, default)
        return check_int(value, self.where, self.name(key), minimum, maximum)

    def optional_int(self, key: str, minimum: int = 1, maximum: int = MAX_CONTEXT) -> int | None:
        value = self.get(key, None)
        return (
            None
            if value is None
            else check_int(value, self.where, self.name(key), minimum, maximum)
        )

    def number(self, key: str, default: Any = _MISSING, minimum: float = 0.0) -> float:
        return check_float(self.get(key, default), self.where, self.name(key), minimum)

    def positive_float(self, key: str, default: Any = _MISSING) -> float:
        return check_positive_float(self.get(key, default), self.where, self.name(key))

    def optional_positive(self, key: str) -> float | None:
        value = self.get(key, None)
        return None if value is None else check_positive_float(value, self.where, self.name(key))

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise CheckpointError(
                f"{self.where}: {self.name(key)} must be a string, not {_describe(value)}"
            )
        return value

    def activation(self, key: str, default: Any = _MISSING) -> str:
        value = self.string(key, default)
        if value not in ACTIVATIONS:
            self.refuse(key, value, f"supported: {', '.join(ACTIVATIONS)}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool | np.bool_):
            raise CheckpointError(
                f"{self.where}: {self.name(key)} must be true or false, not {_describe(value)}"
            )
        return bool(value)

    def bad(self, key: str, value: Any, why: str) -> None:
        raise CheckpointError(f"{self.where}: {self.name(key)} = {_describe(value)}: {why}")

    def refuse(self, key: str, value: Any, why: str) -> None:
        raise UnsupportedError(f"{self.where}: {self.name(key)} = {_describe(value)}: {why}")


class GGUFKeys(_Values):
    """`{arch}.<key>` values of a GGUF file's metadata (a per-layer array is refused)."""

    kind = "metadata key"

    def __init__(self, metadata: dict[str, Any], arch: str, where: str) -> None:
        self.meta, self.arch, self.where = metadata, arch, where

    def name(self, key: str) -> str:
        return f"{self.arch}.{key}"

    def raw(self, key: str) -> Any:
        value = self.meta.get(self.name(key), _MISSING)
        if isinstance(value, np.ndarray | list):
            raise UnsupportedError(
                f"{self.where}: {self.name(key)!r} is an array (per-layer values are not supported)"
            )
        return value


class HFFields(_Values):
    """config.json fields (JSON null counts as absent, as transformers treats it)."""

    kind = "field"

    def __init__(self, config: dict[str, Any], where: str) -> None:
        self.config, self.where = config, where

    def raw(self, key: str) -> Any:
        value = self.config.get(key, _MISSING)
        return _MISSING if value is None else value

    def int_list(self, key: str, n: int) -> tuple[int, ...] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != n:
            raise CheckpointError(f"{self.where}: {key} must be a list of {n} integers")
        return tuple(check_int(v, self.where, key, 0) for v in value)

    def str_list(self, key: str, n: int, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != n or any(v not in allowed for v in value):
            raise CheckpointError(
                f"{self.where}: {key} must be a list of {n} values from {', '.join(allowed)}, "
                f"not {_describe(value)}"
            )
        return tuple(value)


def check_decoder(config: Any, where: str) -> None:
    """What a decoder config's values must satisfy together (after each was range-checked):
    heads divisible by kv heads, an even head_dim, a window of at least one token."""
    c = config
    if c.num_attention_heads % c.num_key_value_heads:
        raise CheckpointError(
            f"{where}: {c.num_attention_heads} attention heads do not divide into "
            f"{c.num_key_value_heads} key/value heads"
        )
    if c.head_dim % 2:
        raise CheckpointError(f"{where}: head_dim {c.head_dim} is odd (rope rotates pairs)")
    window = getattr(c, "sliding_window", None)
    if window is not None and window < 1:
        raise CheckpointError(f"{where}: sliding_window {window} must be at least 1")
