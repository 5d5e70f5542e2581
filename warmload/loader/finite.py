"""NaN/Inf in a checkpoint's weights: float values and the float scales of quantized blocks.

A NaN in one F16 scale of one Q4_K block turns every logit into NaN, and sampling then prints
nothing or garbage. `check_finite` (LoadConfig.check_tensors, `--check-tensors`) looks at every
float value of F32/F16/BF16 tensors and at every block's scale fields (d, and dmin or m where the
block has one) of the block formats below, without dequantizing: the fields are read as strided
integer views of the mapped bytes and tested on their exponent bits, so a check costs one pass
over the pages (the warm-up's cost). `nonfinite_logits_error` is what the engine raises when a
forward pass produces NaN/Inf logits: it names the first tensor such a scan finds.

Block layouts (scale field offsets in bytes) follow ggml-common.h's block_* structs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from warmload.errors import CheckpointError
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.formats.ggml_types import GGML_TYPES

# type -> byte offsets of its fp16 scale fields in one block (Q8_K: an f32 d at 0)
F16_SCALES: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q8_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,), "TQ1_0": (52,), "TQ2_0": (64,),
}  # fmt: skip
F32_SCALES: dict[str, tuple[int, ...]] = {"Q8_K": (0,)}
# float element types: (integer view, exponent mask): all exponent bits set = Inf or NaN
FLOATS = {
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000),
}
_MASKS = {"<u2": 0x7C00, "<u4": 0x7F800000}


def _first_nonfinite(values: np.ndarray, mask: int) -> int | None:
    bad = np.flatnonzero((values & values.dtype.type(mask)) == mask)
    return int(bad[0]) if len(bad) else None


def tensor_problem(info: TensorInfo, data: memoryview | bytes) -> str | None:
    """What is non-finite in one tensor's bytes ("element 7 is NaN/Inf", "block 3's scale at
    byte 0 is NaN/Inf"); None when it is finite or its type has nothing to check."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if info.ggml_type in FLOATS:
        view, mask = FLOATS[info.ggml_type]
        found = _first_nonfinite(buf.view(np.dtype(view)), mask)
        return None if found is None else f"element {found} is NaN or Inf"
    block = GGML_TYPES[info.ggml_type].type_size if info.ggml_type in GGML_TYPES else 0
    for scales, view in ((F16_SCALES, "<u2"), (F32_SCALES, "<u4")):
        for offset in scales.get(info.ggml_type, ()):
            n_blocks = len(buf) // block
            fields = np.ndarray(
                (n_blocks,), np.dtype(view), buffer=buf, offset=offset, strides=(block,)
            )
            found = _first_nonfinite(fields, _MASKS[view])
            if found is not None:
                return f"block {found} has a NaN or Inf scale (byte {offset} of the block)"
    return None


def nonfinite_tensors(checkpoint: Checkpoint, names: Iterable[str] | None = None) -> list[str]:
    """'name: problem' for every tensor (of `names`, default all) with a non-finite value."""
    found = []
    for name in names if names is not None else list(checkpoint.tensors):
        info = checkpoint.tensors[name]
        problem = tensor_problem(info, checkpoint.source.view(info.file, info.offset, info.nbytes))
        if problem:
            found.append(f"{name} ({info.ggml_type}): {problem}")
    return found


def check_finite(checkpoint: Checkpoint, names: Iterable[str] | None = None) -> None:
    """Raise CheckpointError naming every tensor with a NaN/Inf value or block scale."""
    found = nonfinite_tensors(checkpoint, names)
    if found:
        more = f"; ... and {len(found) - 8} more" if len(found) > 8 else ""
        shown = "; ".join(found[:8]) + more
        raise CheckpointError(
            f"{checkpoint.path}: {len(found)} tensor(s) hold NaN or Inf: {shown} (a corrupt file)"
        )


def nonfinite_logits_error(path: str | Path, position: int) -> CheckpointError:
    """The error for NaN/Inf logits at `position`: the tensor(s) to blame, found by a scan of
    the file (reopened: the loaded copy may no longer be mapped)."""
    from warmload.formats.open import open_checkpoint  # the rare path only

    try:
        with open_checkpoint(path) as checkpoint:
            found = nonfinite_tensors(checkpoint)
    except (CheckpointError, OSError) as exc:
        found, why = [], f" (could not scan the file: {exc})"
    else:
        why = ""
    if found:
        blame = f"likely cause: {'; '.join(found[:4])}"
    else:
        blame = "no tensor holds NaN/Inf, so the values overflowed (a damaged or unsuitable model)"
    return CheckpointError(
        f"{path}: the model produced NaN/Inf logits at position {position}; {blame}{why}"
    )
