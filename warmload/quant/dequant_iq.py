"""IQ4_NL and IQ4_XS dequantizers: 4-bit indices into a fixed non-linear table of int8 values.

Layouts: llama.cpp ggml/src/ggml-common.h (block_iq4_nl, block_iq4_xs, kvalues_iq4nl) and
dequantize_row_iq4_* in ggml-quants.c; float operations in the order of gguf-py's
gguf/quants.py (IQ4_XS: sub-block scale d * (ls - 32) first), so results are bit-identical.
"""

from __future__ import annotations

import torch

from warmload.quant.raw import columns, constant, f16_field, gather, planes

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _lookup(q: torch.Tensor, out: torch.Tensor) -> None:
    """out[i] = float(KVALUES_IQ4NL[q[i]]) for q, a uint8 tensor of nibbles laid out as out."""
    table = constant(KVALUES_IQ4NL, torch.float32, q.device)
    torch.index_select(table, 0, q.view(-1).to(torch.int32), out=out.view(-1))


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(1, n, k, 16) bytes -> (n, k, 2, 16) uint8: per 16 bytes, 16 low then 16 high nibbles."""
    _, n, k, width = qs.shape
    p = planes(qs, 4)  # (2, 1, n, k, 16)
    q = torch.empty((n, k, 2, width), dtype=torch.uint8, device=qs.device)
    q[:, :, 0].copy_(p[0, 0])
    q[:, :, 1].copy_(p[1, 0])
    return q


def dequantize_iq4_nl(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """IQ4_NL (18 bytes): f16 d, 16 bytes of nibbles (16 low, then 16 high); x = d * kv[q]."""
    n = blocks.shape[0]
    _lookup(_nibbles(gather(blocks, 2, 18).view(1, n, 1, 16)), out)
    out *= f16_field(blocks, 0)


def _iq4_xs_scales(blocks: torch.Tensor) -> torch.Tensor:
    """IQ4_XS sub-block scales d * (ls - 32), float32 (n, 8). ls has 6 bits: the low 4 from the
    nibbles of bytes 4-7 (sub-block 2i low nibble of byte 4 + i, 2i+1 high), the top 2 from the
    u16 at bytes 2-3 (sub-block k at bits 2k)."""
    cols = columns(blocks, 2, 8)  # (6, n)
    n = cols.shape[1]
    low = planes(cols[2:6], 4).transpose(0, 1).reshape(8, n)  # (byte, nibble) -> k = 2i + h
    high = planes(cols[0:2], 2).transpose(0, 1).reshape(8, n)  # (byte, field) -> k = 4i + t
    high <<= 4
    low |= high
    ls = low.view(torch.int8)
    ls -= 32
    dl = torch.empty((n, 8), dtype=torch.float32, device=blocks.device)
    torch.mul(f16_field(blocks, 0).view(1, n), ls, out=dl.t())  # contiguous (n, 8) for the mul_
    return dl


def dequantize_iq4_xs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """IQ4_XS (136 bytes): f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes of nibbles (each
    16-byte group: 16 low, then 16 high); 8 sub-blocks of 32: x = (d * (ls - 32)) * kv[q]."""
    n = blocks.shape[0]
    _lookup(_nibbles(gather(blocks, 8, 136).view(1, n, 8, 16)), out)
    out.view(n, 8, 32).mul_(_iq4_xs_scales(blocks).unsqueeze(-1))
