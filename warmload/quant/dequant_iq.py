"""IQ4_NL and IQ4_XS dequantizers: 4-bit indices into a fixed non-linear table of int8 values.

Layouts: llama.cpp ggml/src/ggml-common.h (block_iq4_nl, block_iq4_xs, kvalues_iq4nl) and
dequantize_row_iq4_* in ggml-quants.c; float operations in the order of gguf-py's
gguf/quants.py (IQ4_XS: sub-block scale d * (ls - 32) first), so results are bit-identical.
"""

from __future__ import annotations

import torch

from warmload.quant.raw import constant, f16_field, split_bits

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _lookup(q: torch.Tensor, out: torch.Tensor) -> None:
    """out[i] = float(KVALUES_IQ4NL[q[i]]) for q, a uint8 tensor of nibbles laid out as out."""
    table = constant(KVALUES_IQ4NL, torch.float32, q.device)
    torch.index_select(table, 0, q.reshape(-1).to(torch.int32), out=out.view(-1))


def dequantize_iq4_nl(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """IQ4_NL (18 bytes): f16 d, 16 bytes of nibbles (16 low, then 16 high); x = d * kv[q]."""
    _lookup(split_bits(blocks[:, 2:18], 4), out)
    out *= f16_field(blocks, 0)


def _iq4_xs_scales(blocks: torch.Tensor) -> torch.Tensor:
    """IQ4_XS 6-bit sub-block scales minus 32, (n, 8) int32: low 4 bits from the nibbles of
    bytes 4-7 (sub-block 2i low nibble, 2i+1 high), high 2 bits from the u16 at bytes 2-3."""
    low = blocks[:, 4:8].to(torch.int32).unsqueeze(-1) >> constant(
        (0, 4), torch.int32, blocks.device
    )
    low = low.flatten(1) & 0x0F
    high = blocks[:, 2:4].to(torch.int32)
    high = high[:, 0:1] | (high[:, 1:2] << 8)
    high = (high >> constant(tuple(range(0, 16, 2)), torch.int32, blocks.device)) & 0x03
    return (low | (high << 4)) - 32


def dequantize_iq4_xs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """IQ4_XS (136 bytes): f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes of nibbles (each
    16-byte group: 16 low, then 16 high); 8 sub-blocks of 32: x = (d * (ls - 32)) * kv[q]."""
    n = blocks.shape[0]
    dl = (f16_field(blocks, 0) * _iq4_xs_scales(blocks)).unsqueeze(-1)
    _lookup(split_bits(blocks[:, 8:136].view(n, 8, 16), 4), out)
    out.view(n, 8, 32).mul_(dl)
