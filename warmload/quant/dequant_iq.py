"""IQ4_NL and IQ4_XS dequantizers: 4-bit indices into a fixed non-linear table of int8 values.

Layouts: llama.cpp ggml/src/ggml-common.h (block_iq4_nl, block_iq4_xs, kvalues_iq4nl) and
dequantize_row_iq4_* in ggml-quants.c; float operations in the order of gguf-py's
gguf/quants.py (IQ4_XS: sub-block scale d * (ls - 32) first), so results are bit-identical.

The table lookup runs on byte pairs: a 65536-entry int16 table maps two packed bytes straight
to their two low-nibble values (another to the two high-nibble ones), a quarter of the lookups
of one per nibble (index_select costs about 0.5 ns per lookup whatever the table).
"""

from __future__ import annotations

import torch

from warmload.quant.raw import columns, f16_field, interleave, planes

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

_PAIR_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _pair_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int16 tables over u = byte0 | byte1 << 8: (kv[lo nibbles], kv[high nibbles]) as int8
    pairs in memory order."""
    tables = _PAIR_TABLES.get(device)
    if tables is None:
        kv = torch.tensor(KVALUES_IQ4NL, dtype=torch.int8)
        u = torch.arange(65536, dtype=torch.int32)
        b = torch.stack([u & 0xFF, u >> 8], dim=1)  # (65536, 2): byte0, byte1
        low = kv[b & 0x0F].view(torch.int16).view(65536)
        high = kv[b >> 4].view(torch.int16).view(65536)
        tables = _PAIR_TABLES[device] = (low.to(device), high.to(device))
    return tables


def _lookup(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(n, 2 * (stop - start)) int8 kvalues of the nibbles in bytes [start, stop) of each block,
    per 16 bytes: the 16 low-nibble values, then the 16 high-nibble ones."""
    n = blocks.shape[0]
    pairs = blocks.view(torch.int16)[:, start // 2 : stop // 2]  # (n, k) byte pairs
    index = pairs.to(torch.int32).view(-1)
    index &= 0xFFFF  # the int16 view sign-extended
    low, high = _pair_tables(blocks.device)
    values = torch.empty((2, index.numel()), dtype=torch.int16, device=blocks.device)
    torch.index_select(low, 0, index, out=values[0])
    torch.index_select(high, 0, index, out=values[1])
    groups = index.numel() // 8  # 16-byte groups: 8 pairs each
    return interleave(values.view(2, 1, groups, 8)).view(torch.int8).view(n, -1)


def dequantize_iq4_nl(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """IQ4_NL (18 bytes): f16 d, 16 bytes of nibbles (16 low, then 16 high); x = d * kv[q]."""
    out.copy_(_lookup(blocks, 2, 18))
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
    out.copy_(_lookup(blocks, 8, 136))
    out.view(n, 8, 32).mul_(_iq4_xs_scales(blocks).unsqueeze(-1))
