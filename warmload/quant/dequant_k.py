"""K-quant dequantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-element super-blocks.

Layouts: llama.cpp ggml/src/ggml-common.h (block_q2_K ... block_q6_K) and dequantize_row_q*_K
in ggml-quants.c. The float operations follow gguf-py's gguf/quants.py exactly (sub-block
scale = d * sc in float32 first, then scale * q, then - min), so the output is bit-identical to
it. Each kernel is `fn(blocks, out)`: blocks (n, type_size) uint8, out (n, 256) float32.
"""

from __future__ import annotations

import torch

from warmload.quant.raw import f16_field, split_bits


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q2_K (84 bytes): 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit
    quants, f16 d, f16 dmin; 16 sub-blocks of 16: x = (d * sc) * q - (dmin * m)."""
    n = blocks.shape[0]
    sc = blocks[:, 0:16]
    dl = (f16_field(blocks, 80) * (sc & 0x0F)).unsqueeze(-1)
    ml = (f16_field(blocks, 82) * (sc >> 4)).unsqueeze(-1)
    q = split_bits(blocks[:, 16:80].view(n, 2, 32), 2)  # (n, 2, 4, 32)
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o *= dl
    o -= ml


def _q3_k_scales(s: torch.Tensor) -> torch.Tensor:
    """Q3_K's 12 scale bytes -> (n, 16) int8: 6-bit scales minus 32.

    Bytes 0-7 hold the low 4 bits (low nibbles of 0-7 are scales 0-7, high nibbles 8-15);
    bytes 8-11 hold the high 2 bits, scale i in bits 2*(i // 4) of byte 8 + i % 4.
    """
    n = s.shape[0]
    low = split_bits(s[:, 0:8], 4).view(n, 16)
    high = split_bits(s[:, 8:12], 2).view(n, 16)
    high <<= 4
    low |= high
    scales = low.view(torch.int8)
    scales -= 32
    return scales


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q3_K (110 bytes): 32 bytes high-bit mask, 64 bytes of 2-bit quants, 12 bytes of 6-bit
    scales, f16 d; 16 sub-blocks of 16: x = (d * (sc - 32)) * (q2 - (hbit ? 0 : 4))."""
    n = blocks.shape[0]
    dl = (f16_field(blocks, 108) * _q3_k_scales(blocks[:, 96:108])).unsqueeze(-1)
    q = split_bits(blocks[:, 32:96].view(n, 2, 32), 2).view(n, 8, 32)
    hbit = split_bits(blocks[:, 0:32].view(n, 1, 32), 1).view(n, 8, 32)
    hbit <<= 2
    q |= hbit  # q2 + 4 * hbit, then - 4 below: q2 - 4 * (1 - hbit)
    q = q.view(torch.int8)
    q -= 4
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o *= dl


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 scale bytes -> 6-bit (scales, mins), each (n, 8) uint8.

    Scales/mins 0-3 are the low 6 bits of bytes 0-3 / 4-7; 4-7 take their low 4 bits from the
    nibbles of bytes 8-11 and their top 2 bits from the top bits of bytes 0-3 / 4-7.
    """
    n = s.shape[0]
    s3 = s.view(n, 3, 4)
    a, b, c = s3[:, 0], s3[:, 1], s3[:, 2]
    sc = torch.empty((n, 2, 4), dtype=torch.uint8, device=s.device)
    mn = torch.empty((n, 2, 4), dtype=torch.uint8, device=s.device)
    torch.bitwise_and(a, 0x3F, out=sc[:, 0])
    torch.bitwise_and(b, 0x3F, out=mn[:, 0])
    torch.bitwise_or(c & 0x0F, (a >> 2) & 0x30, out=sc[:, 1])
    torch.bitwise_or(c >> 4, (b >> 2) & 0x30, out=mn[:, 1])
    return sc.view(n, 8), mn.view(n, 8)


def _k_dequant(blocks: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K/Q5_K tail: x = (d * sc) * q - (dmin * m) over 8 sub-blocks of 32."""
    n = blocks.shape[0]
    sc, mn = _k_scale_min(blocks[:, 4:16])
    dl = (f16_field(blocks, 0) * sc).unsqueeze(-1)
    ml = (f16_field(blocks, 2) * mn).unsqueeze(-1)
    o = out.view(n, 8, 32)
    o.copy_(q.view(n, 8, 32))
    o *= dl
    o -= ml


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    (each 32-byte group: 32 low nibbles, then 32 high nibbles)."""
    n = blocks.shape[0]
    _k_dequant(blocks, split_bits(blocks[:, 16:144].view(n, 4, 32), 4), out)


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_K (176 bytes): as Q4_K plus 32 bytes of high bits (bit k of byte j: element 32k+j)
    before the 128 bytes of nibbles."""
    n = blocks.shape[0]
    q = split_bits(blocks[:, 48:176].view(n, 4, 32), 4).view(n, 8, 32)
    hbit = split_bits(blocks[:, 16:48].view(n, 1, 32), 1).view(n, 8, 32)
    hbit <<= 4
    q |= hbit
    _k_dequant(blocks, q, out)


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16 d;
    16 sub-blocks of 16: x = (d * sc) * (q - 32)."""
    n = blocks.shape[0]
    dl = (f16_field(blocks, 208) * blocks[:, 192:208].view(torch.int8)).unsqueeze(-1)
    q = split_bits(blocks[:, 0:128].view(n, 2, 64), 4).view(n, 8, 32)
    high = split_bits(blocks[:, 128:192].view(n, 2, 32), 2).view(n, 8, 32)
    high <<= 4
    q |= high
    q = q.view(torch.int8)
    q -= 32
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o *= dl
