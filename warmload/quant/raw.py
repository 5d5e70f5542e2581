"""Raw GGML bytes as torch tensors, and the block-unpacking steps the dequantizers share.

The dequantizers take a flat uint8 tensor of whole blocks and write into a float tensor. This
module turns what callers hold (bytes, memoryview of an mmap, numpy or torch uint8) into that
byte tensor without copying, allocates outputs, and holds the unpacking steps: f16 fields,
bit planes (planes), plane-major field gathers (gather, columns), bit strings (bit_bytes) and
the copy back to block order (interleave). They exist because torch's eager kernels only run
fast on long contiguous runs: bit ops go over whole flat buffers, layout changes are plain
2-D copies. Reference for the block layouts: llama.cpp ggml/src/ggml-common.h.
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


def planes(x: torch.Tensor, width: int, fields: tuple[int, ...] | None = None) -> torch.Tensor:
    """Bit fields of the contiguous bytes x as (8 // width, *x.shape) uint8 planes: plane i holds
    field fields[i] (default i), bits [f*width, (f+1)*width) of every byte (GGML packs 4-, 2- and
    1-bit quants lowest field first).

    Every op here runs over the whole flat buffer: torch's uint8 kernels only vectorise runs of
    at least 128 bytes, so bit twiddling on short strided rows (16-32 bytes) is 5-10x slower.
    """
    fields = tuple(range(8 // width)) if fields is None else fields
    n_planes = len(fields)
    flat = x.reshape(-1)
    out = torch.empty((n_planes, flat.numel()), dtype=torch.uint8, device=x.device)
    for i, field in enumerate(fields):
        # one flat op per plane with a scalar shift: torch vectorises that, but not a shift by a
        # broadcast tensor of shift amounts (5x slower measured)
        if field == 0:
            torch.bitwise_and(flat, (1 << width) - 1, out=out[i])
        else:
            torch.bitwise_right_shift(flat, field * width, out=out[i])
    if width < 4:  # middle fields still carry the bits above them
        out &= (1 << width) - 1
    return out.view(n_planes, *x.shape)


def bit_bytes(qh: torch.Tensor, zero: int, one: int) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) int8: `one` where bit j of the little-endian bit string is set,
    else `zero` (a 256-entry table of 8-byte words looked up once per byte)."""
    n, k = qh.shape
    key = (zero, one, qh.device)
    table = _BIT_TABLES.get(key)
    if table is None:
        rows = [[one if (v >> b) & 1 else zero for b in range(8)] for v in range(256)]
        table = torch.tensor(rows, dtype=torch.int8).view(torch.int64).view(256)
        table = _BIT_TABLES[key] = table.to(qh.device)
    words = table.index_select(0, qh.to(torch.int32).reshape(n * k))
    return words.view(torch.int8).view(n, 8 * k)


_BIT_TABLES: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def gather(
    blocks: torch.Tensor, start: int, stop: int, order: tuple[int, ...] = (0,)
) -> torch.Tensor:
    """Bytes [start, stop) of every block as a contiguous (len(order), n, width) tensor: the
    field is cut into len(order) equal slices and group g holds slice order[g] of all blocks
    (plane-major, so the bit ops that follow run over long flat runs)."""
    n = blocks.shape[0]
    width = (stop - start) // len(order)
    out = torch.empty((len(order), n, width), dtype=torch.uint8, device=blocks.device)
    for g, i in enumerate(order):
        out[g].copy_(blocks[:, start + i * width : start + (i + 1) * width])
    return out


def columns(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bytes [start, stop) of every block transposed to a contiguous (stop - start, n) tensor:
    per-block scale bytes, so scale arithmetic runs along n instead of on 4-16 byte rows."""
    out = torch.empty((stop - start, blocks.shape[0]), dtype=torch.uint8, device=blocks.device)
    out.copy_(blocks[:, start:stop].t())
    return out


def interleave(q: torch.Tensor) -> torch.Tensor:
    """Plane-major q (B, A, n, L) -> a contiguous (n, A * B * L) tensor in block order (n, A, B,
    L), by one 2-D copy per plane (several times faster in torch than one permuted 4-D copy).

    Quants are assembled in a small integer buffer like this and only then converted into the
    float output by one sequential copy: writing the float output plane by plane is strided and
    costs twice the memory traffic once the output no longer fits in cache.
    """
    b_planes, a_planes, n, length = q.shape
    out = torch.empty((n, a_planes, b_planes, length), dtype=q.dtype, device=q.device)
    for a in range(a_planes):
        for b in range(b_planes):
            out[:, a, b].copy_(q[b, a])
    return out.view(n, -1)
