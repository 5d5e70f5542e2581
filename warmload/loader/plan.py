"""The load plan: pure mapping of checkpoint tensors onto model parameters, checked up front.

Given the checkpoint's TensorInfo records (header only), the architecture's GGUF name table and
the parameter shapes of the model built on `meta`, make_load_plan decides for every tensor its
parameter, its transform and the read order (file offset order, so mmap reads run forward),
and raises WeightMismatchError (missing / unexpected / mis-shaped, sorted) or
UnsupportedError (a quant type we cannot dequantize) or CheckpointError (integers where weights
belong) before a single tensor byte is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from warmload.errors import CheckpointError, UnsupportedError, WeightMismatchError
from warmload.formats.checkpoint import TensorInfo
from warmload.quant.dequant import DEQUANTIZERS

ROPE_FREQS = "rope_freqs.weight"  # llama 3.1+ frequency factors: input to prepare(), no param
MAX_LISTED = 12  # names listed per kind in an error message


@dataclass(frozen=True, slots=True)
class TensorLoad:
    """One tensor's trip: checkpoint `source` -> `transform` -> parameter `target`."""

    source: str
    target: str
    ggml_type: str
    shape: tuple[int, ...]
    nbytes: int
    transform: str = "dequantize"  # or "pack": keep the GGML blocks for quantized kernels


@dataclass(frozen=True, slots=True)
class LoadPlan:
    tensors: tuple[TensorLoad, ...]  # in read order
    rope_freq_factors: TensorLoad | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def expand_names(table: Mapping[str, str], n_layers: int) -> dict[str, str]:
    """The name table with "{i}" expanded for every layer: checkpoint name -> parameter."""
    names = {}
    for src, dst in table.items():
        if "{i}" in src:
            names.update({src.format(i=i): dst.format(i=i) for i in range(n_layers)})
        else:
            names[src] = dst
    return names


def make_load_plan(
    path: str | Path,
    tensors: Mapping[str, TensorInfo],
    name_table: Mapping[str, str],
    n_layers: int,
    expected: Mapping[str, tuple[int, ...]],
    tied: Mapping[str, str],
    packable: Callable[[str, str], bool] = lambda target, ggml_type: False,
) -> LoadPlan:
    """Plan the load of `tensors` into parameters of the shapes in `expected`.

    `tied` maps parameters that share another's tensor (lm_head -> embed_tokens); they need no
    checkpoint tensor. `packable(target, ggml_type)` says whether a tensor stays in its GGML
    blocks (transform "pack") instead of being dequantized. Raises before any byte is read if
    names, shapes or types disagree.
    """
    names = expand_names(name_table, n_layers)
    reverse = {dst: src for src, dst in names.items()}
    wanted = {name: shape for name, shape in expected.items() if name not in tied}
    loads, unexpected, misshaped = [], [], []
    seen: set[str] = set()
    rope = None
    for info in sorted(tensors.values(), key=lambda t: (t.file, t.offset)):
        if info.name == ROPE_FREQS:
            rope = TensorLoad(info.name, "", info.ggml_type, tuple(info.shape), info.nbytes)
            continue
        target = names.get(info.name)
        if target is None or target not in wanted:
            unexpected.append(info.name)
            continue
        seen.add(target)
        if tuple(info.shape) != tuple(wanted[target]):
            misshaped.append(f"{info.name} {tuple(info.shape)} != {tuple(wanted[target])}")
        else:
            transform = "pack" if packable(target, info.ggml_type) else "dequantize"
            shape = tuple(info.shape)
            loads.append(
                TensorLoad(info.name, target, info.ggml_type, shape, info.nbytes, transform)
            )
    missing = sorted(reverse.get(n, n) for n in wanted if n not in seen)
    _check_names(path, missing, sorted(unexpected), sorted(misshaped))
    _check_types(path, loads + ([rope] if rope else []))
    return LoadPlan(tuple(loads), rope)


def _listed(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"{len(names)} {kind}: {shown}{more}"


def _check_names(
    path: str | Path, missing: list[str], unexpected: list[str], misshaped: list[str]
) -> None:
    parts = [
        _listed(kind, names)
        for kind, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", misshaped),
        )
        if names
    ]
    if parts:
        raise WeightMismatchError(
            f"{path}: checkpoint tensors do not match the model: {'; '.join(parts)} "
            f"(a different model variant or a damaged file?)"
        )


# Storage types that hold integers or booleans: no llama.cpp or HF weight is stored so, and
# converting them to float would run a model on garbage (issue 17 item 18).
INTEGER_TYPES = frozenset({"I8", "I16", "I32", "I64", "U8", "BOOL"})


def _check_types(path: str | Path, loads: list[TensorLoad]) -> None:
    ints = sorted(f"{t.source} ({t.ggml_type})" for t in loads if t.ggml_type in INTEGER_TYPES)
    if ints:
        raise CheckpointError(
            f"{path}: {_listed('tensors stored as integers', ints)}; model weights are float or "
            "quantized types (a corrupt file, or not a model's weights?)"
        )
    bad = sorted(f"{t.source} ({t.ggml_type})" for t in loads if t.ggml_type not in DEQUANTIZERS)
    if bad:
        raise UnsupportedError(
            f"{path}: {_listed('tensors of unsupported types', bad)} "
            f"(supported: {', '.join(sorted(DEQUANTIZERS))})"
        )
