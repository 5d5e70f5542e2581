"""The scale searches of llama.cpp's K-quants, vectorised over many groups at once with numpy.

Reference: llama.cpp ggml/src/ggml-quants.c: nearest_int, make_qx_quants, make_q3_quants and
make_qkx2_quants, the helpers that quantize_row_q2_K_ref .. quantize_row_q6_K_ref call (these are
what llama_model_quantize runs when no importance matrix is given).

Layout: every function takes the groups *transposed*, as an (n, G) float32 array whose column g
is one group of n values. Reductions over axis 0 of a C-contiguous array are then plain
left-to-right sums (numpy only uses pairwise summation along the contiguous axis), which is the
order of the C loops, and every expression keeps the C code's float32 operation order, so the
results are the reference's bit for bit. Each C loop over a group's elements becomes one
vector operation over all groups; the only Python loops are over the search steps and, in
make_q3_quants' coordinate descent, over the n elements of a group.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """Round half to even, like the C helper's 1.5 * 2**23 trick (exact for |v| < 2**22)."""
    return np.rint(v)


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0 (the order of `for (i...) s += a[i]`)."""
    return np.add.reduce(a, axis=0, dtype=F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, max): the largest |x| of each column and the signed value where it first occurs."""
    idx = np.argmax(np.abs(x), axis=0)
    vmax = np.take_along_axis(x, idx[None, :], axis=0)[0]
    return np.abs(vmax), vmax


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL): symmetric scale search.

    Returns (scale (G,), L (n, G) int in [0, 2*nmax)).
    """
    n, g = x.shape
    amax, vmax = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    vmax = np.where(zero, F32(1), vmax)
    w = x * x
    wx = w * x
    iscale = _safe_div(F32(-nmax), vmax)
    l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    sumlx = seq_sum(wx * l)
    suml2 = seq_sum(w * l * l)
    L = l
    scale = np.where(suml2 != 0, _safe_div(sumlx, suml2), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = _safe_div(-(F32(nmax) + F32(0.1) * F32(step)), vmax)
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        sumlx = seq_sum(wx * l)
        suml2 = seq_sum(w * l * l)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if better.any():
            L = np.where(better, l, L)
            new_scale = _safe_div(sumlx, suml2)
            scale = np.where(better, new_scale, scale)
            best = np.where(better, new_scale * sumlx, best)
    L = (L + nmax).astype(np.int32)
    L[:, zero] = 0
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), L


def make_q3_quants_rmse(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true): symmetric scale with coordinate descent.

    Returns (scale (G,), L (n, G) int in [0, 2*nmax)).
    """
    n, g = x.shape
    amax, vmax = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    vmax = np.where(zero, F32(1), vmax)
    iscale = _safe_div(F32(-nmax), vmax)
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    for _ in range(5):
        changed_any = False
        for i in range(n):
            wi, wxi, xi, li = w[i], wx[i], x[i], L[i]
            slx = sumlx - wxi * li
            pos = slx > 0
            sl2 = suml2 - wi * li * li
            new_l = np.clip(nearest_int(_safe_div(xi * sl2, slx)), -nmax, nmax - 1)
            cand = pos & (new_l != li)
            if not cand.any():
                continue
            slx = slx + wxi * new_l
            sl2 = sl2 + wi * new_l * new_l
            ok = cand & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if ok.any():
                changed_any = True
                L[i] = np.where(ok, new_l, li)
                sumlx = np.where(ok, slx, sumlx)
                suml2 = np.where(ok, sl2, suml2)
        if not changed_any:
            break  # a pass without changes leaves the state as it was: every later pass too
    scale = np.where(suml2 > 0, _safe_div(sumlx, suml2), F32(0))
    L = (L + nmax).astype(np.int32)
    L[:, zero] = 0
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), L


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants: asymmetric (scale, min) search over nstep + 1 candidate scales.

    Returns (scale (G,), the_min (G,) = -min >= 0, L (n, G) int in [0, nmax]).
    """
    xmin = np.minimum(x.min(axis=0), F32(0))
    xmax = x.max(axis=0)
    sum_w = seq_sum(weights)
    sum_x = seq_sum(weights * x)
    flat = xmax == xmin
    span = np.where(flat, F32(1), xmax - xmin)

    def err_of(scale: np.ndarray, mn: np.ndarray, L: np.ndarray) -> np.ndarray:
        diff = scale * L + mn - x
        return seq_sum(weights * (np.abs(diff) if use_mad else diff * diff))

    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    mn = xmin
    L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
    best = err_of(scale, mn, L)
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(
            flat, F32(1), xmax - mn
        )
        laux = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        wl = weights * laux
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(wl * laux)
        sum_xl = seq_sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _safe_div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = _safe_div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, _safe_div(sum_xl, sum_l2), this_scale)
        cur = err_of(this_scale, this_min, laux)
        better = (D > 0) & (cur < best) & ~flat
        if better.any():
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale)
    L = L.astype(np.int32)
    L[:, flat] = 0
    return scale.astype(F32), (-mn).astype(F32), L


def fp16_round(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGML_FP32_TO_FP16 then back: (the f16 bits as uint16, the value it holds as float32)."""
    h = v.astype(np.float16)
    return h.view(np.uint16), h.astype(F32)
