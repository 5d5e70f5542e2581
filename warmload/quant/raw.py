"""Raw GGML bytes as torch tensors: zero-copy byte views in, float outputs out.

The dequantizers take a flat uint8 tensor of whole blocks and write into a float tensor. This
module turns what callers hold (bytes, memoryview of an mmap, numpy or torch uint8) into that
byte tensor without copying, reads the little-endian f16 scale fields of a block view, and
allocates outputs. Reference for the block layouts: llama.cpp ggml/src/ggml-common.h.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

# numpy asks the kernel for transparent huge pages on big allocations (torch's CPU allocator
# only does with THP_MEM_ALLOC_ENABLE=1); first-touch page faults otherwise dominate a
# dequantization into a fresh tensor (measured 1.7 vs 3.4 GB/s for a 64 MB fill here).
_NUMPY_DTYPES: dict[torch.dtype, Any] = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.uint16,  # no numpy bfloat16: same width, viewed back below
    torch.float64: np.float64,
}
_HUGE_ALLOC_BYTES = 1 << 20


def as_byte_tensor(raw: Any) -> torch.Tensor:
    """A flat uint8 tensor over raw's bytes, without copying them.

    raw: bytes, bytearray, memoryview (e.g. of an mmap), a numpy array or a torch tensor (any
    dtype; its bytes are taken, on its device). Read-only buffers are wrapped as they are: torch
    warns that it cannot mark them read-only, which is harmless here because the dequantizers
    only read their input, so that one warning is silenced.
    """
    if isinstance(raw, torch.Tensor):
        t = raw if raw.is_contiguous() else raw.contiguous()
        return t.reshape(-1).view(torch.uint8)
    if isinstance(raw, np.ndarray):
        arr = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        if arr.size == 0:
            return torch.empty(0, dtype=torch.uint8)
        if arr.flags.writeable:
            return torch.from_numpy(arr)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(arr)
    mv = raw if isinstance(raw, memoryview) else memoryview(raw)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if mv.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    if not mv.readonly:
        return torch.frombuffer(mv, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(mv, dtype=torch.uint8)


def f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The f16 at byte `offset` of each block of `blocks` (n, type_size), as float32 (n, 1)."""
    return blocks[:, offset : offset + 2].view(torch.float16).float()


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor for a dequantized result (huge-page backed on CPU when big)."""
    n = 1
    for d in shape:
        n *= d
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if device.type != "cpu" or np_dtype is None or n * dtype.itemsize < _HUGE_ALLOC_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    out = torch.from_numpy(np.empty(n, dtype=np_dtype))
    if dtype == torch.bfloat16:
        out = out.view(torch.bfloat16)
    return out.view(shape)


_CONSTANTS: dict[tuple[tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}


def constant(values: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor (shift amounts, lookup tables), cached per device."""
    key = (values, dtype, device)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return t


def split_bits(x: torch.Tensor, width: int) -> torch.Tensor:
    """(..., k) bytes -> (..., 8 // width, k) uint8: field i of every byte is bits
    [i*width, (i+1)*width), lowest field first (how GGML packs 4-, 2- and 1-bit quants)."""
    n_fields = 8 // width
    fields = torch.empty((*x.shape[:-1], n_fields, x.shape[-1]), dtype=torch.uint8, device=x.device)
    mask = (1 << width) - 1
    if width == 4:  # the common case in two ops, no broadcast shift
        torch.bitwise_and(x, mask, out=fields[..., 0, :])
        torch.bitwise_right_shift(x, 4, out=fields[..., 1, :])
        return fields
    shifts = constant(tuple(range(0, 8, width)), torch.uint8, x.device).view(n_fields, 1)
    torch.bitwise_right_shift(x.unsqueeze(-2), shifts, out=fields)
    fields &= mask
    return fields


def unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2k) uint8: the k low nibbles, then the k high nibbles (GGML order)."""
    n, k = qs.shape
    return split_bits(qs, 4).view(n, 2 * k)


def bit_string(qh: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) uint8 0/1: bit j of the little-endian bit string at index j."""
    n, k = qh.shape
    bits = torch.empty((n, k, 8), dtype=torch.uint8, device=qh.device)
    torch.bitwise_right_shift(
        qh.unsqueeze(-1), constant(tuple(range(8)), torch.uint8, qh.device), out=bits
    )
    bits &= 1
    return bits.view(n, 8 * k)
