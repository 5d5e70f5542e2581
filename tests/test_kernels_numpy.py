"""The C kernels (warmload/kernels/*.c, arm/*.h) through raw pointers on numpy buffers only: no
torch, so the same file runs on x86 in the normal suite and under qemu on the aarch64 lane
(scripts/arm64_lane.sh, `make test-arm`).

Ground truth: gguf-py's numpy dequantizers (`gguf.quants.dequantize`). The integer paths are
checked against the exact product of the 8-bit activations (quantized as quantize_x does: d =
max|x| / 127, q = nearest(x * (1 / d))) with the dequantized weights, in float64: the integer
sums are exact, so only the float scaling and summing of per-block results differ (tolerance
1e-5 of sum |w x|). Within a build a token's result is the same bits however many tokens share
the call; on aarch64 the row dots and the many-token product are one arithmetic, checked bit
for bit. `python tests/test_kernels_numpy.py --digest` prints hashes of the dequantized rows and
of the integer products, which the lane compares across its builds: the dequantizers of the NEON,
dotprod and i8mm builds against the plain C build's (-DWARMLOAD_GENERIC), bit for bit, and the
integer products of the three (the plain C build has none) with each other.
"""

from __future__ import annotations

import hashlib
import platform
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from warmload import kernels
from warmload.formats.ggml_types import GGML_TYPES

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="the C extension is not built")
FLOAT, INT8, DEQUANT, GEMM, ROW_DOTS = range(5)
AARCH64 = platform.machine().lower() in ("aarch64", "arm64")
QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]
SUPER_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
# byte offsets of each type's fp16 scales (ggml-common.h): set to sane values in random blocks
SCALE_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ4_XS": (0,),
}  # fmt: skip


# every kernel variant this CPU runs (warmload.kernels.dispatch), else the one module built
VARIANTS = kernels.runnable_variants() if hasattr(kernels, "runnable_variants") else [None]


@pytest.fixture(autouse=True, params=VARIANTS, ids=lambda v: v or "built")
def variant(request):
    """Each test once per variant: warmload.kernels rebound to it meanwhile."""
    if request.param is None:
        yield None
        return
    with kernels.use_variant(request.param):
        yield request.param


def cpu():
    """The extension module of the variant under test."""
    return kernels._cpu


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def random_blocks(name: str, n_rows: int, k: int, seed: int = 0) -> np.ndarray:
    """(n_rows, row_nbytes) uint8: random quants (every bit pattern) with finite scales."""
    rng = np.random.default_rng(seed)
    info = GGML_TYPES[name]
    if name in ("F16", "BF16"):
        w = rng.standard_normal((n_rows, k)).astype(np.float32)
        if name == "F16":
            return w.astype(np.float16).view(np.uint8)
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    n_blocks = n_rows * k // info.block_size
    raw = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    for at in SCALE_FIELDS[name]:
        scale = rng.uniform(0.001, 0.02, n_blocks).astype(np.float16)
        raw[:, at : at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def dequantized(raw: np.ndarray, name: str) -> np.ndarray:
    if name == "F16":
        return raw.view(np.float16).astype(np.float32)
    if name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType[name]), np.float32)


def quantize_x(x: np.ndarray) -> np.ndarray:
    """x (T, K) -> the values the integer paths see: d * q per block of 32, as quantize_x."""
    t, k = x.shape
    blocks = x.reshape(t, k // 32, 32)
    d = (np.abs(blocks).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv)  # float32 product, rounded half to even (nearbyintf)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(t, k)


def matmul(name: str, raw: np.ndarray, x: np.ndarray, mode: int) -> np.ndarray:
    n_rows = raw.shape[0]
    t, k = x.shape
    y = np.full((t, n_rows), np.nan, np.float32)
    cpu().matmul(k, ptr(x), t, ((kernels.type_id(name), ptr(raw), n_rows, ptr(y), mode),))
    return y


def activations(t: int, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, k)).astype(np.float32) * rng.uniform(0.1, 4, (t, 1))
    x[0, :32] = 0.0  # an all-zero block: d = 0
    return np.ascontiguousarray(x.astype(np.float32))


def int8_types() -> list[str]:
    return [name for name, kind in kernels.KERNEL_TYPES.items() if kind == "int8"]


def shape_of(name: str) -> tuple[int, int]:
    """Odd row counts (row pairs of smmla and one left over); for the 32-value types a k that
    is not whole groups of 4 blocks."""
    return (37, 512) if name in SUPER_TYPES else (37, 32 * 13)


# types with a per-row integer dot (quants.c's table on AVX2 and NEON builds); the others'
# integer path is the many-token product alone
ROW_DOT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ALL_TYPES = QUANT_TYPES + SUPER_TYPES + ["F16", "BF16"]


@pytest.mark.parametrize("name", ALL_TYPES)
def test_dequantize_matches_gguf_py(name: str):
    n_rows, k = shape_of(name)
    raw = random_blocks(name, n_rows, k)
    got = np.empty((n_rows, k), np.float32)
    cpu().matmul(k, 0, 1, ((kernels.type_id(name), ptr(raw), n_rows, ptr(got), DEQUANT),))
    np.testing.assert_array_equal(got, dequantized(raw, name))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_float_product_matches_numpy(name: str):
    n_rows, k = shape_of(name)
    raw, x = random_blocks(name, n_rows, k), activations(3, k)
    w = dequantized(raw, name).astype(np.float64)
    want = x.astype(np.float64) @ w.T
    bound = np.abs(x).astype(np.float64) @ np.abs(w).T
    err = np.abs(matmul(name, raw, x, FLOAT) - want)
    assert np.all(err <= 1e-5 * bound + 1e-30), float((err / bound).max())


@pytest.mark.parametrize("tokens", [1, 3, 8, 11])
@pytest.mark.parametrize("name", QUANT_TYPES + SUPER_TYPES)
def test_integer_products_match_the_exact_sum(name: str, tokens: int):
    """Every integer path of this build (the per-row dots, the many-token product, and what
    decode steps take) against the exact product of the 8-bit x with the dequantized w."""
    if name not in int8_types():
        pytest.skip(f"{name} takes the float path in this build")
    n_rows, k = shape_of(name)
    raw, x = random_blocks(name, n_rows, k, seed=tokens), activations(tokens, k, seed=tokens)
    w = dequantized(raw, name).astype(np.float64)
    xq = quantize_x(x)
    want, bound = xq @ w.T, np.abs(xq) @ np.abs(w).T
    modes = [INT8] + ([ROW_DOTS] if name in ROW_DOT_TYPES else [])
    modes += [GEMM] if name in kernels.GEMM_TYPES else []
    for mode in modes:
        got = matmul(name, raw, x, mode)
        err = np.abs(got - want)
        assert np.all(err <= 1e-5 * bound + 1e-30), (mode, float((err / bound).max()))


@pytest.mark.parametrize("name", QUANT_TYPES + SUPER_TYPES)
def test_a_token_gets_the_same_bits_however_it_is_batched(name: str):
    """Decode steps, batches and prompt chunks of any size: one token's result, one set of
    bits (tiles of 8 tokens, a pair of rows per smmla, the odd token and row left over)."""
    if name not in int8_types():
        pytest.skip(f"{name} takes the float path in this build")
    n_rows, k = shape_of(name)
    raw, x = random_blocks(name, n_rows, k), activations(19, k)
    whole = matmul(name, raw, x, INT8)
    for size in (1, 2, 3, 5, 8, 9):
        for t0 in range(0, 19, size):
            part = matmul(name, raw, np.ascontiguousarray(x[t0 : t0 + size]), INT8)
            np.testing.assert_array_equal(part, whole[t0 : t0 + size], err_msg=f"size {size}")


@pytest.mark.skipif(not AARCH64, reason="the NEON row dots and products share one arithmetic")
@pytest.mark.parametrize("name", ROW_DOT_TYPES)
def test_neon_row_dots_and_product_are_the_same_bits(name: str):
    if not int8_types():
        pytest.skip("a plain C build (-DWARMLOAD_GENERIC): no integer products")
    assert kernels.DECODE_TAKES_GEMM  # arm/neon_gemm.h: decode steps take the product
    n_rows, k = shape_of(name)
    raw, x = random_blocks(name, n_rows, k), activations(10, k)
    np.testing.assert_array_equal(matmul(name, raw, x, ROW_DOTS), matmul(name, raw, x, GEMM))


def test_rms_norm_and_act_mul_match_numpy():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 576)) * 7).astype(np.float32)
    g = rng.standard_normal(576).astype(np.float32)
    y = np.empty_like(x)
    cpu().rms_norm(ptr(x), ptr(g), 5, 576, 1e-6, 1.0, ptr(y))
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * (1.0 + g)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    gate, up = rng.standard_normal((2, 1000)).astype(np.float32)
    out = np.empty_like(gate)
    cpu().act_mul(ptr(gate), ptr(up), 1000, 0, ptr(out))
    silu = gate / (1 + np.exp(-gate.astype(np.float64))) * up
    np.testing.assert_allclose(out, silu, rtol=1e-5, atol=1e-6)


def dequant_digest() -> str:
    """sha256 of every type's dequantized rows (bits, signs of zeros included)."""
    h = hashlib.sha256()
    for name in ALL_TYPES:
        n_rows, k = shape_of(name)
        raw = random_blocks(name, n_rows, k)
        got = np.empty((n_rows, k), np.float32)
        cpu().matmul(k, 0, 1, ((kernels.type_id(name), ptr(raw), n_rows, ptr(got), DEQUANT),))
        h.update(name.encode() + got.tobytes())
    return h.hexdigest()


def product_digest() -> str:
    """sha256 of every integer product of this build on fixed inputs (bits, not values)."""
    h = hashlib.sha256()
    for name in sorted(int8_types()):
        n_rows, k = shape_of(name)
        raw, x = random_blocks(name, n_rows, k), activations(11, k)
        for mode in (INT8, ROW_DOTS) if name in ROW_DOT_TYPES else (INT8,):
            h.update(name.encode() + matmul(name, raw, x, mode).tobytes())
    return h.hexdigest()


if __name__ == "__main__" and "--digest" in sys.argv:
    print(f"variant {getattr(kernels, 'VARIANT', None) or 'built'} available {kernels.AVAILABLE}")
    if not kernels.AVAILABLE:
        sys.exit(0)
    print(f"dequant digest {dequant_digest()}")
    print(f"product digest {product_digest()} ({', '.join(sorted(int8_types()))})")


def rope_neox(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """(n, heads, D) rotated in halves (j, j + D/2) by angles (n, D/2)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


@pytest.mark.parametrize("softcap", [0.0, 0.75])
@pytest.mark.parametrize(("n", "chunk"), [(1, 0), (5, 1)])
def test_attention_matches_numpy(n: int, chunk: int, softcap: float):
    """Rope, cache write and causal softmax attention (GQA, 4 query heads per key head) of a
    decode step (n = 1) or a prompt chunk, after 7 cached positions; softcap > 0: scores
    capped to softcap * tanh(s / softcap) first (Gemma 2), 0: the call without the argument."""
    rng = np.random.default_rng(5)
    H, KV, D, max_ctx, pos0, scale = 8, 2, 64, 32, 7, 0.125
    q, k, v = (rng.standard_normal((n, h, D)).astype(np.float32) for h in (H, KV, KV))
    cache_k = rng.standard_normal((1, KV, max_ctx, D)).astype(np.float32)
    cache_v = rng.standard_normal((1, KV, max_ctx, D)).astype(np.float32)
    want_k, want_v = cache_k.astype(np.float64), cache_v.astype(np.float64)
    pos = np.arange(pos0, pos0 + n)
    angles = pos[:, None] * 10000.0 ** (-np.arange(D // 2) * 2 / D)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    out = np.empty_like(q)
    args = (ptr(q), ptr(k), ptr(v), ptr(cache_k), ptr(cache_v), n, H, KV, D, max_ctx, 0, pos0)
    tail = (ptr(cos), ptr(sin), D // 2, 1, 0, ptr(out))
    cpu().attention(*args, chunk, 0, scale, *tail, *((softcap,) if softcap else ()))
    rq = rope_neox(q.astype(np.float64), cos, sin)
    want_k[0, :, pos] = rope_neox(k.astype(np.float64), cos, sin)  # indexed as (n, KV, D)
    want_v[0, :, pos] = v
    np.testing.assert_allclose(cache_k, want_k, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache_v, want_v)
    for i in range(n):
        for h in range(H):
            keys = want_k[0, h // (H // KV), : pos0 + i + 1]
            scores = keys @ rq[i, h] * scale
            if softcap:
                scores = np.tanh(scores / softcap) * softcap
            p = np.exp(scores - scores.max())
            want = (p / p.sum()) @ want_v[0, h // (H // KV), : pos0 + i + 1]
            np.testing.assert_allclose(out[i, h], want, rtol=1e-4, atol=1e-5)
