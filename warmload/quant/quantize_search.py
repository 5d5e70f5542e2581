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


def nearest_int(v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Round half to even, like the C helper's 1.5 * 2**23 trick (exact for |v| < 2**22)."""
    return np.rint(v, out=out)


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0 (the order of `for (i...) s += a[i]`)."""
    return np.add.reduce(a, axis=0, dtype=F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, max) per column: the largest |x| and the signed value where it first occurs, as
    the C loops' `if (ax > amax) { amax = ax; max = x; }` find it (+0.0 for an all-zero
    column). From the column max and min; only columns that hold both +amax and -amax need the
    position of the first one (rare)."""
    mx, mn = x.max(axis=0), x.min(axis=0)
    amax = np.maximum(mx, -mn)
    vmax = np.where(-mn > mx, mn, mx)
    tie = np.flatnonzero((-mn == mx) & (mx > 0))
    if tie.size:
        sub = x[:, tie]
        vmax[tie] = sub[np.argmax(np.abs(sub), axis=0), np.arange(tie.size)]
    zero = amax == 0
    vmax[zero], amax[zero] = 0, 0  # +0.0, as the C loops leave them
    return amax, vmax


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
    l, tmp = np.empty_like(x), np.empty_like(x)  # reused buffers: no allocation per step

    def quants_and_sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        np.multiply(x, iscale, out=l)
        np.rint(l, out=l)
        np.clip(l, -nmax, nmax - 1, out=l)
        sumlx = seq_sum(np.multiply(wx, l, out=tmp))
        np.multiply(w, l, out=tmp)
        return sumlx, seq_sum(np.multiply(tmp, l, out=tmp))

    # The C code re-derives L from the winning iscale; so do we, once, at the end, instead of
    # copying the winners' quants at every step.
    best_iscale = _safe_div(F32(-nmax), vmax)
    sumlx, suml2 = quants_and_sums(best_iscale)
    scale = np.where(suml2 != 0, _safe_div(sumlx, suml2), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = _safe_div(-(F32(nmax) + F32(0.1) * F32(step)), vmax)
        sumlx, suml2 = quants_and_sums(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if better.any():
            new_scale = _safe_div(sumlx, suml2)
            scale = np.where(better, new_scale, scale)
            best = np.where(better, new_scale * sumlx, best)
            best_iscale = np.where(better, iscale, best_iscale)
    np.clip(np.rint(np.multiply(x, best_iscale, out=l), out=l), -nmax, nmax - 1, out=l)
    L = (l + nmax).astype(np.int32)
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
    wxl, wll = wx * L, w * L
    wll *= L
    sumlx, suml2 = seq_sum(wxl), seq_sum(wll)
    # A pass that changes nothing in a column leaves its state as it was, so every later pass
    # would change nothing either (the C loop breaks there): only changed columns go on. Until
    # a column's first accepted change its sums are those at the start of the pass, so one
    # whole-matrix screen finds the columns where the pass changes nothing, exactly; only the
    # others (a minority) run the element-by-element pass.
    active = np.arange(g)
    for _ in range(5):
        if active.size == 0:
            break
        if wxl is not None:  # the first pass: all columns, their terms already known
            moving = _q3_screen(x, w, wx, L, sumlx, suml2, nmax, wxl, wll)
            wxl = wll = None
        else:
            sub = (x[:, active], w[:, active], wx[:, active], L[:, active])
            moving = _q3_screen(*sub, sumlx[active], suml2[active], nmax)
        active = active[moving]
        if active.size == 0:
            break
        changed = _q3_pass(x[:, active], w[:, active], wx[:, active], L, sumlx, suml2, active, nmax)
        active = active[changed]
    scale = np.where(suml2 > 0, _safe_div(sumlx, suml2), F32(0))
    L = (L + nmax).astype(np.int32)
    L[:, zero] = 0
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), L


def _q3_screen(
    x: np.ndarray, w: np.ndarray, wx: np.ndarray, L: np.ndarray, sx: np.ndarray,
    s2: np.ndarray, nmax: int, wxl: np.ndarray | None = None, wll: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Columns in which a make_q3_quants pass would accept at least one change. wxl, wll:
    the terms wx * L and w * L * L when known (the buffers are reused)."""
    if wxl is None or wll is None:
        wxl, wll = wx * L, w * L
        wll *= L
    slx = np.subtract(sx, wxl, out=wxl)
    sl2 = np.subtract(s2, wll, out=wll)
    new_l = np.multiply(x, sl2)
    with np.errstate(divide="ignore", invalid="ignore"):
        new_l /= slx
    np.clip(nearest_int(new_l, out=new_l), -nmax, nmax - 1, out=new_l)
    rows, cols = np.nonzero((slx > 0) & (new_l != L))  # candidates are a small minority
    nl, wxc, wc = new_l[rows, cols], wx[rows, cols], w[rows, cols]
    slx_n = slx[rows, cols] + wxc * nl
    sl2_n = sl2[rows, cols] + wc * nl * nl
    sxc, s2c = sx[cols], s2[cols]
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (sl2_n > 0) & (slx_n * slx_n * s2c > sxc * sxc * sl2_n)
    moving = np.zeros(x.shape[1], bool)
    moving[cols[ok]] = True
    return moving


def _q3_pass(
    x: np.ndarray, w: np.ndarray, wx: np.ndarray, L: np.ndarray, sumlx: np.ndarray,
    suml2: np.ndarray, cols: np.ndarray, nmax: int,
) -> np.ndarray:  # fmt: skip
    """One coordinate-descent pass of make_q3_quants over the columns `cols` of L, sumlx and
    suml2 (updated in place); x, w, wx are those columns already. Returns which changed."""
    La, sx, s2 = L[:, cols], sumlx[cols], suml2[cols]
    changed = np.zeros(cols.size, bool)
    for i in range(x.shape[0]):
        li = La[i]
        slx = sx - wx[i] * li
        sl2 = s2 - w[i] * li * li
        new_l = np.clip(nearest_int(_safe_div(x[i] * sl2, slx)), -nmax, nmax - 1)
        idx = np.flatnonzero((slx > 0) & (new_l != li))
        if idx.size == 0:
            continue
        nl = new_l[idx]
        slx_n = slx[idx] + wx[i, idx] * nl
        sl2_n = sl2[idx] + w[i, idx] * nl * nl
        sx_i = sx[idx]
        ok = (sl2_n > 0) & (slx_n * slx_n * s2[idx] > sx_i * sx_i * sl2_n)
        j = idx[ok]
        La[i, j], sx[j], s2[j] = nl[ok], slx_n[ok], sl2_n[ok]
        changed[j] = True
    L[:, cols], sumlx[cols], suml2[cols] = La, sx, s2
    return changed


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

    laux, tmp, tmp2 = np.empty_like(x), np.empty_like(x), np.empty_like(x)  # reused buffers

    def quants(iscale: np.ndarray, mn: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.subtract(x, mn, out=out)
        np.multiply(out, iscale, out=out)
        np.rint(out, out=out)
        return np.clip(out, 0, nmax, out=out)

    def err_of(scale: np.ndarray, mn: np.ndarray, L: np.ndarray) -> np.ndarray:
        np.multiply(L, scale, out=tmp)  # diff = scale * L + min - x
        np.add(tmp, mn, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        return seq_sum(np.multiply(tmp, weights, out=tmp))

    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    mn = xmin
    L = quants(iscale, mn, np.empty_like(x))
    best = err_of(scale, mn, L)
    # The winners' quants are re-derived once at the end from their iscale and the min they
    # were quantized with, instead of being copied at every step.
    best_iscale, best_qmin = iscale, mn
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(
            flat, F32(1), xmax - mn
        )
        quants(iscale, mn, laux)
        wl = np.multiply(weights, laux, out=tmp)
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(np.multiply(wl, laux, out=tmp2))
        wl *= x
        sum_xl = seq_sum(wl)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _safe_div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = _safe_div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, _safe_div(sum_xl, sum_l2), this_scale)
        cur = err_of(this_scale, this_min, laux)
        better = (D > 0) & (cur < best) & ~flat
        if better.any():
            best_iscale = np.where(better, iscale, best_iscale)
            best_qmin = np.where(better, mn, best_qmin)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = quants(best_iscale, best_qmin, L)
    scale = np.where(flat, F32(0), scale)
    L = L.astype(np.int32)
    L[:, flat] = 0
    return scale.astype(F32), (-mn).astype(F32), L


def fp16_round(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGML_FP32_TO_FP16 then back: (the f16 bits as uint16, the value it holds as float32)."""
    h = v.astype(np.float16)
    return h.view(np.uint16), h.astype(F32)
