"""Dequantization of GGML tensors with vectorised torch (CPU or CUDA): one dispatch table.

`dequantize(raw, "Q4_K", shape)` turns a tensor's raw GGML bytes into a float tensor of `shape`
(PyTorch order: the last dimension is the contiguous one that blocks run along);
`dequantize_rows` does the same for selected rows only (embedding lookups).

Each entry of DEQUANTIZERS is `fn(blocks, out) -> None`: `blocks` is a (n, type_size) uint8
view of n whole blocks and `out` the (n, block_size) float32 tensor it fills. Kernels unpack
bits with uint8 ops over whole flat buffers (raw.planes), assemble the integer quants with 2-D
copies (raw.interleave), then convert into `out` with one sequential copy and finish with
in-place float ops in the same order as gguf-py's numpy reference (gguf/quants.py), so results
are bit-identical to it; llama.cpp's ggml-quants.c dequantize_row_* defines the formats. Large
tensors go in chunks of blocks so temporaries stay in cache. Block and type sizes come from
formats/ggml_types.py (GGML_TYPES).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.ggml_types import GGML_TYPES, GGMLType
from warmload.quant.dequant_iq import dequantize_iq4_nl, dequantize_iq4_xs
from warmload.quant.dequant_k import (
    dequantize_q2_k,
    dequantize_q3_k,
    dequantize_q4_k,
    dequantize_q5_k,
    dequantize_q6_k,
)
from warmload.quant.raw import as_byte_tensor, bit_bytes, empty_output, f16_field, planes

Dequantizer = Callable[[torch.Tensor, torch.Tensor], None]

# Float elements per chunk (8 MB of float32 output): small enough that the chunk's output and
# temporaries stay in L2/L3 between the few passes over them, big enough that the ~20-90 torch
# ops per chunk (each an OpenMP region) cost little. Measured on 2 Zen 4 cores: 2M beat 0.5M,
# 1M and 4M with 2 threads and tied 1M with 1; 16M was best only on a heavily oversubscribed
# machine, where every OpenMP barrier waits for a descheduled thread.
CPU_CHUNK_ELEMENTS = 1 << 21
CUDA_CHUNK_ELEMENTS = 1 << 26


def _nibbles(blocks: torch.Tensor, start: int, minus: int = 0) -> torch.Tensor:
    """(n, 32) int8: the nibbles of the 16 bytes at `start` of each block (16 low, then 16
    high), minus `minus`."""
    n = blocks.shape[0]
    p = planes(blocks, 4).view(torch.int8)  # (2, n, type_size): bit ops over the flat chunk
    if minus:
        p -= minus
    q = torch.empty((n, 2, 16), dtype=torch.int8, device=blocks.device)
    q[:, 0].copy_(p[0, :, start : start + 16])
    q[:, 1].copy_(p[1, :, start : start + 16])
    return q.view(n, 32)


def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_0 (18 bytes): f16 d, 16 bytes of nibbles; x = d * (q - 8)."""
    out.copy_(_nibbles(blocks, 2, minus=8))
    out *= f16_field(blocks, 0)


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_1 (20 bytes): f16 d, f16 m, 16 bytes of nibbles; x = d * q + m."""
    out.copy_(_nibbles(blocks, 4))
    out *= f16_field(blocks, 0)
    out += f16_field(blocks, 2)


def _q5(blocks: torch.Tensor, out: torch.Tensor, qh_start: int, zero: int, one: int) -> None:
    """Q5_0/Q5_1 quants: nibbles at qh_start + 4 plus bit j of the u32 at qh_start as 16."""
    q = _nibbles(blocks, qh_start + 4)
    q += bit_bytes(blocks[:, qh_start : qh_start + 4], zero, one)
    out.copy_(q)


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_0 (22 bytes): f16 d, u32 high bits, 16 bytes of nibbles; x = d * (q - 16)."""
    _q5(blocks, out, 2, -16, 0)  # nibble + 16 * bit - 16 in int8
    out *= f16_field(blocks, 0)


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_1 (24 bytes): f16 d, f16 m, u32 high bits, 16 bytes of nibbles; x = d * q + m."""
    _q5(blocks, out, 4, 0, 16)
    out *= f16_field(blocks, 0)
    out += f16_field(blocks, 2)


def dequantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q8_0 (34 bytes): f16 d, 32 int8; x = q * d."""
    out.copy_(blocks[:, 2:34].view(torch.int8))
    out *= f16_field(blocks, 0)


def _plain(dtype: torch.dtype) -> Dequantizer:
    """F32/F16/BF16/F64/I8..I64: a cast of the typed view (straight into the output dtype)."""

    def cast(blocks: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(blocks.view(dtype))

    cast.__name__ = f"cast_{str(dtype).removeprefix('torch.')}"
    return cast


_PLAIN_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
}

# Byte offsets of the f16 fields (d, then dmin or m) in one block of each quant type: tests and
# benchmarks put finite scales there when they build random blocks.
F16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}

DEQUANTIZERS: dict[str, Dequantizer] = {
    **{name: _plain(dt) for name, dt in _PLAIN_DTYPES.items()},
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
    "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1,
    "Q8_0": dequantize_q8_0,
    "Q2_K": dequantize_q2_k,
    "Q3_K": dequantize_q3_k,
    "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k,
    "Q6_K": dequantize_q6_k,
    "IQ4_NL": dequantize_iq4_nl,
    "IQ4_XS": dequantize_iq4_xs,
}


def _ggml_type(ggml_type: Any) -> GGMLType:
    """The GGMLType for a name ("Q4_K", any case) or an enum member with that .name."""
    qtype = GGML_TYPES.get(str(getattr(ggml_type, "name", ggml_type)).upper())
    if qtype is None or qtype.name not in DEQUANTIZERS:
        raise UnsupportedError(
            f"cannot dequantize GGML type {ggml_type!r}; supported: {', '.join(DEQUANTIZERS)}"
        )
    return qtype


def _check_shape(qtype: GGMLType, shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """(shape as a tuple of ints, number of blocks) or CheckpointError."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{qtype.name} tensor has a negative dimension in shape {dims}")
    last = dims[-1] if dims else 1
    if last % qtype.block_size:
        raise CheckpointError(
            f"{qtype.name} tensor of shape {dims}: the last dimension ({last}) is not a "
            f"multiple of the {qtype.name} block size ({qtype.block_size})"
        )
    n = 1
    for d in dims:
        n *= d
    return dims, n // qtype.block_size


def _check_nbytes(qtype: GGMLType, dims: tuple[int, ...], n_blocks: int, nbytes: int) -> None:
    expected = n_blocks * qtype.type_size
    if nbytes != expected:
        raise CheckpointError(
            f"{qtype.name} tensor of shape {dims} needs {expected} bytes ({n_blocks} blocks of "
            f"{qtype.type_size} bytes) but {nbytes} bytes were given"
        )


def _check_dtype(dtype: Any) -> torch.dtype:
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dequantize: dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _run(qtype: GGMLType, data: torch.Tensor, n_blocks: int, out: torch.Tensor) -> None:
    """Dequantize n_blocks blocks of `data` into the contiguous tensor `out`, chunk by chunk."""
    if n_blocks == 0:
        return
    fn = DEQUANTIZERS[qtype.name]
    if data.storage_offset() % 8 or data.data_ptr() % 8:
        data = data.clone()  # typed views of the f16/f32 fields need aligned bytes
    blocks = data.view(n_blocks, qtype.type_size)
    out2 = out.view(n_blocks, qtype.block_size)
    if qtype.name in _PLAIN_DTYPES:
        fn(blocks, out2)  # one cast: no chunking, no float32 detour
        return
    chunk_elements = CUDA_CHUNK_ELEMENTS if out.is_cuda else CPU_CHUNK_ELEMENTS
    step = max(1, chunk_elements // qtype.block_size)
    scratch = None
    if out.dtype != torch.float32:
        rows = min(step, n_blocks)
        scratch = torch.empty((rows, qtype.block_size), dtype=torch.float32, device=out.device)
    for start in range(0, n_blocks, step):
        stop = min(start + step, n_blocks)
        if scratch is None:
            fn(blocks[start:stop], out2[start:stop])
        else:
            fn(blocks[start:stop], scratch[: stop - start])
            out2[start:stop].copy_(scratch[: stop - start])


def dequantize(
    raw: Any,
    ggml_type: str,
    shape: Sequence[int],
    dtype: torch.dtype | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw GGML bytes -> a tensor of `shape` (float32 unless `dtype`), on raw's device.

    raw: bytes-like, memoryview, numpy array or torch tensor holding exactly the tensor's
    blocks (read without copying). out: an optional contiguous tensor of `shape` to fill (its
    dtype wins over `dtype`), e.g. a parameter's storage, to skip a fresh allocation.
    Raises UnsupportedError for a type we cannot dequantize and CheckpointError when the byte
    count disagrees with shape and type.
    """
    qtype = _ggml_type(ggml_type)
    dims, n_blocks = _check_shape(qtype, shape)
    data = as_byte_tensor(raw)
    _check_nbytes(qtype, dims, n_blocks, data.numel())
    if out is None:
        out = empty_output(dims, _check_dtype(dtype), data.device)
    elif tuple(out.shape) != dims or not out.is_contiguous() or out.device != data.device:
        raise ValueError(
            f"dequantize: out must be a contiguous tensor of shape {dims} on {data.device}, "
            f"got shape {tuple(out.shape)} on {out.device}"
        )
    else:
        _check_dtype(out.dtype)
    _run(qtype, data, n_blocks, out)
    return out


def row_nbytes(ggml_type: str, n_columns: int) -> int:
    """Bytes of one row of n_columns elements of a GGML type."""
    qtype = _ggml_type(ggml_type)
    _check_shape(qtype, (n_columns,))
    return n_columns // qtype.block_size * qtype.type_size


def dequantize_rows(
    raw: Any,
    ggml_type: str,
    shape: Sequence[int],
    rows: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dequantize only the given rows of a GGML matrix: (*rows.shape, shape[-1]).

    A row is one index into the flattened leading dimensions of `shape` (rows of a GGML
    matrix are contiguous runs of row_nbytes bytes), so this is an embedding lookup that never
    dequantizes the whole table. Row indices are checked on CPU (IndexError with the numbers);
    on CUDA, index_select's own device check applies (a check there would synchronise).
    """
    qtype = _ggml_type(ggml_type)
    dims, n_blocks = _check_shape(qtype, shape)
    data = as_byte_tensor(raw)
    _check_nbytes(qtype, dims, n_blocks, data.numel())
    n_columns = dims[-1] if dims else 1
    n_rows = n_blocks * qtype.block_size // n_columns if n_columns else 0
    index = torch.as_tensor(rows, device=data.device)
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"dequantize_rows: rows must be an integer tensor, got {index.dtype}")
    flat = index.reshape(-1)
    if flat.device.type == "cpu" and flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= n_rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"dequantize_rows: row {bad} out of range for {n_rows} rows")
    row_bytes = n_columns // qtype.block_size * qtype.type_size
    picked = data.view(n_rows, row_bytes).index_select(0, flat)
    out = dequantize(picked, qtype.name, (flat.numel(), n_columns), dtype)
    return out.view(*index.shape, n_columns)
