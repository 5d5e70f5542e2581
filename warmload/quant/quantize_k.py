"""Float32 -> K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), vectorised with numpy.

Reference: llama.cpp ggml/src/ggml-quants.c quantize_row_q2_K_ref .. quantize_row_q6_K_ref, the
functions ggml_quantize_chunk (and so llama_model_quantize) uses when no importance matrix is
given; block layouts from ggml-common.h. Each function takes nb super-blocks of 256 weights
column-major, as (group, nb * 256 // group) float32 whose column g is group g (16 weights for
Q2_K, Q3_K and Q6_K, 32 for Q4_K and Q5_K; quantize.GROUP_SIZE), and returns their
(nb, type_size) uint8 encoding, bit-identical to the reference (tests compare with llama.cpp's
own ggml_quantize_chunk). The scale searches live in quantize_search.py; this
module arranges super-blocks into groups, quantizes the group scales and packs the bits.
quantize.py runs the C kernels (warmload/kernels/kquant.c, 5-20x faster) instead when the
extension is built; these are the fallback without it, tested against the same bytes.
"""

from __future__ import annotations

import numpy as np

from warmload.quant.quantize_search import (
    F32,
    GROUP_MAX_EPS,
    first_absmax,
    fp16_round,
    make_q3_quants_rmse,
    make_qkx2_quants,
    make_qx_quants_rmse1,
    nearest_int,
    seq_sum,
)

QK_K = 256


def _ungroup(L: np.ndarray, nb: int) -> np.ndarray:
    """The integer quants of column-major groups (size, G) as (nb, 256) uint8 rows."""
    return np.ascontiguousarray(L.T).reshape(nb, QK_K).astype(np.uint8)


def _requant(xt: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int):
    """Re-round every group with its final (f16-rounded) scale d and min dm, as the reference
    does after packing the scales; groups whose d is 0 keep the quants of the search."""
    nz = d != 0
    num = xt if dm is None else xt + dm
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int(num / np.where(nz, d, F32(1))), lo, hi)
    return np.where(nz, q - lo if lo < 0 else q, L).astype(np.int32)


def _pack_2bit(Lb: np.ndarray) -> np.ndarray:
    """qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6, j = 0, 128."""
    q = Lb.reshape(-1, 2, 4, 32)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _pack_nibbles(Lb: np.ndarray) -> np.ndarray:
    """q[32c + l] = (L[64c + l] & 15) | (L[64c + 32 + l] & 15) << 4, c = 0..3."""
    q = Lb.reshape(-1, 4, 2, 32) & np.uint8(15)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins."""
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    return out


def _to_u8(v: np.ndarray) -> np.ndarray:
    """C's int -> uint8_t conversion (modulo 256) of rounded floats."""
    return (v.astype(np.int64) & 0xFF).astype(np.uint8)


def _scale_min_k4(xt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of Q4_K and Q5_K: search, 6-bit scales/mins, f16 d/dmin, final quants."""
    nb = xt.shape[1] // 8
    av_x = np.sqrt(seq_sum(xt * xt) / F32(32))
    weights = av_x + np.abs(xt)
    scales, mins, L = make_qkx2_quants(xt, weights, nmax, rmin, rdelta, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(_to_u8(nearest_int(inv_scale[:, None] * scales)), np.uint8(63))
    lm = np.minimum(_to_u8(nearest_int(inv_min[:, None] * mins)), np.uint8(63))
    d_bits, d = fp16_round(max_scale / F32(63))
    m_bits, dmin = fp16_round(max_min / F32(63))
    dj = (d[:, None] * ls).reshape(1, -1)
    dmj = (dmin[:, None] * lm).reshape(1, -1)
    L = _requant(xt, L, dj, dmj, 0, nmax)
    head = np.concatenate(
        [d_bits[:, None].view(np.uint8), m_bits[:, None].view(np.uint8), _pack_scales_k4(ls, lm)],
        axis=1,
    )
    return head, _ungroup(L, nb)


def quantize_q4_k(xt: np.ndarray) -> np.ndarray:
    """Q4_K (144 bytes): f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles."""
    head, Lb = _scale_min_k4(xt, 15, -1.0, 0.1, 20)
    return np.concatenate([head, _pack_nibbles(Lb)], axis=1)


def quantize_q5_k(xt: np.ndarray) -> np.ndarray:
    """Q5_K (176 bytes): f16 d, f16 dmin, 12 scale bytes, 32 bytes of high bits, 128 of nibbles."""
    head, Lb = _scale_min_k4(xt, 31, -0.5, 0.1, 15)
    high = (Lb >> 4).reshape(-1, 4, 2, 32)
    shifts = (np.arange(8, dtype=np.uint8)).reshape(1, 4, 2, 1)
    qh = np.bitwise_or.reduce(high << shifts, axis=(1, 2)).astype(np.uint8)
    return np.concatenate([head, qh, _pack_nibbles(Lb)], axis=1)


def quantize_q2_k(xt: np.ndarray) -> np.ndarray:
    """Q2_K (84 bytes): 16 scale bytes (4-bit scale | 4-bit min), 64 bytes of 2-bit quants,
    f16 d, f16 dmin."""
    nb = xt.shape[1] // 16
    scales, mins, L = make_qkx2_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        iscale = np.where(max_scale > 0, F32(15) / max_scale, F32(0))
        imin = np.where(max_min > 0, F32(15) / max_min, F32(0))
    sc = nearest_int(iscale[:, None] * scales).astype(np.int64)
    mn = nearest_int(imin[:, None] * mins).astype(np.int64)
    sc_bytes = ((sc | (mn << 4)) & 0xFF).astype(np.uint8)
    d_bits, d = fp16_round(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
    m_bits, dmin = fp16_round(np.where(max_min > 0, max_min / F32(15), F32(0)))
    dj = (d[:, None] * (sc_bytes & 15)).reshape(1, -1)
    dmj = (dmin[:, None] * (sc_bytes >> 4)).reshape(1, -1)
    Lb = _ungroup(_requant(xt, L, dj, dmj, 0, 3), nb)
    tail = np.concatenate([d_bits[:, None].view(np.uint8), m_bits[:, None].view(np.uint8)], 1)
    return np.concatenate([sc_bytes, _pack_2bit(Lb), tail], axis=1)


def quantize_q3_k(xt: np.ndarray) -> np.ndarray:
    """Q3_K (110 bytes): 32 bytes of high-bit masks, 64 bytes of 2-bit quants, 12 bytes of
    6-bit signed scales, f16 d."""
    nb = xt.shape[1] // 16
    scales, L = make_q3_quants_rmse(xt, 4)
    scales = scales.reshape(nb, 16)
    _, max_scale = first_absmax(scales.T)
    nz = max_scale != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(nz, F32(-32) / np.where(nz, max_scale, F32(1)), F32(0))
    l6 = np.clip(nearest_int(iscale[:, None] * scales), -32, 31).astype(np.int64) + 32
    l6[~nz] = 0
    sc = np.zeros((nb, 12), np.uint8)
    sc[:, 0:8] = (l6[:, 0:8] & 15) | ((l6[:, 8:16] & 15) << 4)
    hi = (l6 >> 4).reshape(nb, 4, 4)  # [q, k] = scale 4q + k
    sc[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    d_bits, d = fp16_round(np.where(nz, F32(1) / np.where(nz, iscale, F32(1)), F32(0)))
    dj = (d[:, None] * (l6 - 32).astype(F32)).reshape(1, -1)
    Lb = _ungroup(_requant(xt, L, dj, None, -4, 3), nb)
    high = (Lb > 3).astype(np.uint8).reshape(nb, 8, 32)
    hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate(
        [hmask.astype(np.uint8), _pack_2bit(Lb & 3), sc, d_bits[:, None].view(np.uint8)], 1
    )


def quantize_q6_k(xt: np.ndarray) -> np.ndarray:
    """Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales,
    f16 d."""
    nb = xt.shape[1] // 16
    scales, L = make_qx_quants_rmse1(xt, 32)
    scales = scales.reshape(nb, 16)
    amax, max_scale = first_absmax(scales.T)
    zero = amax < GROUP_MAX_EPS
    safe = np.where(zero, F32(-1), max_scale)
    iscale = F32(-128) / safe
    d_bits, d = fp16_round(F32(1) / iscale)
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    dj = (d[:, None] * sc.astype(F32)).reshape(1, -1)
    Lb = _ungroup(_requant(xt, L, dj, None, -32, 31), nb)
    q = Lb.reshape(nb, 2, 4, 32)
    ql = np.concatenate(
        [
            (q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
            (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4),
        ],
        axis=2,
    ).reshape(nb, 128)
    qh = (
        (q[:, :, 0] >> 4)
        | ((q[:, :, 1] >> 4) << 2)
        | ((q[:, :, 2] >> 4) << 4)
        | ((q[:, :, 3] >> 4) << 6)
    )
    out = np.concatenate(
        [ql, qh.reshape(nb, 64), sc.view(np.uint8), d_bits[:, None].view(np.uint8)], 1
    )
    out[zero] = 0
    return out
