"""K-quant dequantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-element super-blocks.

Layouts: llama.cpp ggml/src/ggml-common.h (block_q2_K ... block_q6_K) and dequantize_row_q*_K
in ggml-quants.c. The float operations follow gguf-py's gguf/quants.py exactly (sub-block
scale = d * sc in float32 first, then scale * q, then - min), so the output is bit-identical to
it. Each kernel is `fn(blocks, out)`: blocks (n, type_size) uint8, out (n, 256) float32.

Speed: quants are unpacked plane-major ((plane, group, n, 32) uint8, see raw.planes) so every
bit op runs over long flat buffers; scale bytes are transposed to (bytes, n) for the same
reason; the last step converts planes into the output with one 2-D copy each.
"""

from __future__ import annotations

import torch

from warmload.quant.raw import columns, f16_field, gather, interleave, planes


def _times_d(blocks: torch.Tensor, offset: int, scales: torch.Tensor) -> torch.Tensor:
    """d (the f16 at `offset` of every block) * scales (k, n) -> float32 (n, k), contiguous.

    The product is written through a transposed view: the big per-element ops that follow
    broadcast a contiguous (n, k, 1) scale 1.6x faster than a transposed one.
    """
    k, n = scales.shape
    out = torch.empty((n, k), dtype=torch.float32, device=blocks.device)
    torch.mul(f16_field(blocks, offset).view(1, n), scales, out=out.t())
    return out


def _scale_(out: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None) -> None:
    """out (n, k * length) *= scales (n, k) per sub-block, then -= mins (n, k) if given."""
    n, k = scales.shape
    o = out.view(n, k, -1)
    o *= scales.unsqueeze(-1)
    if mins is not None:
        o -= mins.unsqueeze(-1)


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q2_K (84 bytes): 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit
    quants, f16 d, f16 dmin; 16 sub-blocks of 16: x = (d * sc) * q - (dmin * m)."""
    q = planes(gather(blocks, 16, 80, order=(0, 1)), 2)  # (4 shifts, 2 halves, n, 32)
    out.copy_(interleave(q))
    sc = planes(gather(blocks, 0, 16)[0], 4)  # (2, n, 16): scales, mins
    _scale_(out, f16_field(blocks, 80) * sc[0], f16_field(blocks, 82) * sc[1])


def _q3_k_scales(blocks: torch.Tensor) -> torch.Tensor:
    """Q3_K's 12 scale bytes -> (16, n) int8: 6-bit scales minus 32.

    Bytes 0-7 hold the low 4 bits (low nibbles of 0-7 are scales 0-7, high nibbles 8-15);
    bytes 8-11 hold the high 2 bits, scale i in bits 2*(i // 4) of byte 8 + i % 4.
    """
    cols = columns(blocks, 96, 108)  # (12, n)
    n = cols.shape[1]
    low = planes(cols[0:8], 4).view(16, n)
    high = planes(cols[8:12], 2).view(16, n)
    high <<= 4
    low |= high
    scales = low.view(torch.int8)
    scales -= 32
    return scales


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q3_K (110 bytes): 32 bytes high-bit mask, 64 bytes of 2-bit quants, 12 bytes of 6-bit
    scales, f16 d; 16 sub-blocks of 16: x = (d * (sc - 32)) * (q2 - (hbit ? 0 : 4))."""
    n = blocks.shape[0]
    q = planes(gather(blocks, 32, 96, order=(0, 1)), 2)  # (4 shifts s, 2 halves g, n, 32)
    # element (g, s, j) takes bit 4g + s of hmask byte j: planes in (s, g) order
    hbit = planes(gather(blocks, 0, 32), 1, fields=(0, 4, 1, 5, 2, 6, 3, 7))
    hbit <<= 2
    q |= hbit.view(4, 2, n, 32)  # q2 + 4 * hbit, then - 4 below: q2 - 4 * (1 - hbit)
    q = q.view(torch.int8)
    q -= 4
    out.copy_(interleave(q))
    _scale_(out, _times_d(blocks, 108, _q3_k_scales(blocks)))


def _k_scale_min(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: the 12 bytes at 4 -> 6-bit (scales, mins) as float32 (n, 8) each, times d
    and dmin.

    Scales/mins 0-3 are the low 6 bits of bytes 0-3 / 4-7; 4-7 take their low 4 bits from the
    nibbles of bytes 8-11 and their top 2 bits from the top bits of bytes 0-3 / 4-7.
    """
    cols = columns(blocks, 4, 16)  # (12, n)
    n = cols.shape[1]
    a, b, c = cols[0:4], cols[4:8], cols[8:12]
    sc = torch.empty((8, n), dtype=torch.uint8, device=blocks.device)
    mn = torch.empty((8, n), dtype=torch.uint8, device=blocks.device)
    torch.bitwise_and(a, 0x3F, out=sc[0:4])
    torch.bitwise_and(b, 0x3F, out=mn[0:4])
    torch.bitwise_or(c & 0x0F, (a >> 2) & 0x30, out=sc[4:8])
    torch.bitwise_or(c >> 4, (b >> 2) & 0x30, out=mn[4:8])
    return _times_d(blocks, 0, sc), _times_d(blocks, 2, mn)


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    (each 32-byte group: 32 low nibbles, then 32 high nibbles); x = (d * sc) * q - (dmin * m)."""
    n = blocks.shape[0]
    q = planes(gather(blocks, 16, 144)[0], 4)  # (2, n, 128)
    out.copy_(interleave(q.view(2, 1, n * 4, 32)).view(n, 256))  # one copy per nibble plane
    _scale_(out, *_k_scale_min(blocks))


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q5_K (176 bytes): as Q4_K plus 32 bytes of high bits (bit k of byte j: element 32k+j)
    before the 128 bytes of nibbles."""
    n = blocks.shape[0]
    q = planes(gather(blocks, 48, 176, order=(0, 1, 2, 3)), 4)  # (2 nibbles h, 4 groups g, n, 32)
    hbit = planes(gather(blocks, 16, 48), 1, fields=(0, 2, 4, 6, 1, 3, 5, 7))  # bit 2g + h
    hbit <<= 4
    q |= hbit.view(2, 4, n, 32)
    out.copy_(interleave(q))
    _scale_(out, *_k_scale_min(blocks))


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16 d;
    16 sub-blocks of 16: x = (d * sc) * (q - 32).

    Element 128 * half + 32 * t + j: low nibble (t // 2) of ql byte 64 * half + 32 * (t % 2) + j,
    high 2 bits field t of qh byte 32 * half + j; both unpacked as (t, half, n, 32) planes.
    """
    n = blocks.shape[0]
    q = planes(gather(blocks, 0, 128, order=(0, 2, 1, 3)), 4).view(4, 2, n, 32)
    high = planes(gather(blocks, 128, 192, order=(0, 1)), 2)  # (4 fields t, 2 halves, n, 32)
    high <<= 4
    q |= high
    q = q.view(torch.int8)
    q -= 32
    out.copy_(interleave(q))
    _scale_(out, f16_field(blocks, 208) * blocks[:, 192:208].view(torch.int8))
