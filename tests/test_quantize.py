"""quant.quantize: bit-exact against gguf-py's numpy quantizers and llama.cpp's own
ggml_quantize_chunk (through ctypes, when llama-cpp-python is installed), and round trips.
The K-quants have two implementations, C (warmload/kernels/kquant.c) and numpy
(quant/quantize_k.py, the fallback without the extension): both are checked against the golden
bytes and llama.cpp, and against each other."""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest

from warmload import kernels
from warmload.errors import UnsupportedError
from warmload.formats.ggml_types import GGML_TYPES
from warmload.quant.quantize import QUANTIZERS, quantize

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
ALL = [*LEGACY, *K_TYPES, "F16", "BF16"]
# (type, use_kernels): every type once, the K-quants once more through their C kernels
BACKENDS = [
    *[(t, False) for t in ALL],
    *[pytest.param(t, True, id=f"{t}-C", marks=pytest.mark.skipif(
        not kernels.AVAILABLE, reason="C kernels not built")) for t in K_TYPES],
]  # fmt: skip
# relative RMS error of a round trip on Gaussian data (measured, with ~15% margin)
MAX_REL_RMSE = {
    "Q8_0": 0.0062, "Q6_K": 0.021, "Q5_K": 0.042, "Q5_0": 0.05, "Q5_1": 0.044, "Q4_K": 0.083,
    "Q4_0": 0.099, "Q4_1": 0.09, "Q3_K": 0.174, "Q2_K": 0.34, "BF16": 0.002, "F16": 0.00025,
}  # fmt: skip


def _weights(rows: int = 48, cols: int = 1024, seed: int = 0) -> np.ndarray:
    """Heavy-tailed rows at different scales plus the edge cases the searches branch on.

    Made with integer hashing and exact float32 operations only, so the values are the same
    on every platform and numpy version (the golden hashes below depend on it)."""
    n = rows * cols
    h = np.arange(n, dtype=np.uint64) + np.uint64(seed * n)
    h = h * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(29)
    u24 = np.float32(2**24)
    a = (h >> np.uint64(40)).astype(np.float32) / u24 - np.float32(0.5)
    b = ((h >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.float32) / u24 + np.float32(1 / 64)
    x = (a / b * np.float32(0.02)).reshape(rows, cols)
    x *= ((np.arange(rows) % 7 + 1) * 0.5).astype(np.float32)[:, None]
    x[0] = 0  # all-zero blocks
    x[1] = 0.5  # constant blocks (max == min)
    x[2, :] = 0
    x[2, 7] = -3.0  # one outlier in a zero block
    x[3] *= np.float32(1e-7)  # tiny
    x[4] = np.abs(x[4])  # all positive (min clamps to 0)
    x[5] = -np.abs(x[5])  # all negative
    x[6, ::2] = np.float32(1e4)  # large
    return x


# SHA-256 of quantize(_weights(), TYPE): the bytes llama.cpp's ggml_quantize_chunk produced for
# the same input (llama-cpp-python 0.3.36; test_bit_exact_with_llama_cpp re-checks when it is
# installed), so runs without llama.cpp still compare against its output.
GOLDEN_SHA256 = {
    "Q4_0": "5fa49d8a1865c7cf0cd9a8acd8049fae6a9bb2ee08037aa9c69d410049be9da0",
    "Q4_1": "ab7d29befa1c8854e3298f5196febf71c5ec4b11569779201cb7b0b55a2d0e07",
    "Q5_0": "665ecc91e92571fd3a4060539ff14308086d40c3076ed5b38ab460419f31273d",
    "Q5_1": "d84f029b58589719a9121cf29e69fe8bc779a97e51e9ff7693fc4ce68a2a9686",
    "Q8_0": "b2c6518c09836c58c1110b25230438249fea497081809b672a0693a19406585c",
    "Q2_K": "ee52095689fa50a99abeaa3c56f70dc5199e8686fb7faea647705ac725990494",
    "Q3_K": "6fa52abb6e249e03ab4bb009350f3bd76370c71c866ad01826d5897924c2ceb2",
    "Q4_K": "add19ba9d6e4c76c42db113eb8b66be01b834275cdacdfe8244587329b204a6b",
    "Q5_K": "131c57777a74520e6d5b0fba561513a7df8bd0981721a1f7ca7b49798a753e81",
    "Q6_K": "78423c134d3acc345a8539b7224622c64ad40df2b3c1fff019078610df5f8bfa",
    "F16": "ec7717cbbd5e8e1be1a605c50dcdba97f161e6ca3b906d48cb6e6123b4200a7b",
    "BF16": "580a58bd749ea4d94c6f1f7033753c89af72b9c7cc21e3b7a83587f340dfb7b8",
}


@pytest.mark.parametrize(("qtype", "use_kernels"), BACKENDS)
def test_golden_bytes_from_llama_cpp(qtype: str, use_kernels: bool) -> None:
    out = quantize(_weights(), qtype, use_kernels=use_kernels)
    digest = hashlib.sha256(out.tobytes()).hexdigest()
    assert digest == GOLDEN_SHA256[qtype]


def _gguf_type(name: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[name]


@pytest.mark.parametrize("qtype", [*LEGACY, "BF16"])
def test_bit_exact_with_gguf_py(qtype: str) -> None:
    x = _weights()
    expected = gguf.quants.quantize(x, _gguf_type(qtype))
    assert np.array_equal(quantize(x, qtype), expected.view(np.uint8).reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def ggml_quantize_chunk():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(lib_dir.glob("libggml-base.*")) or sorted(lib_dir.glob("libggml.*"))
    if not libs:
        pytest.skip(f"no libggml in {lib_dir}")
    fn = ctypes.CDLL(str(libs[0])).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip

    def run(x: np.ndarray, qtype: str) -> np.ndarray:
        t = GGML_TYPES[qtype]
        rows, cols = x.shape
        out = np.zeros((rows, cols // t.block_size * t.type_size), np.uint8)
        fn(t.id, x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        return out

    return run


@pytest.mark.peer
@pytest.mark.parametrize(("qtype", "use_kernels"), BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_bit_exact_with_llama_cpp(ggml_quantize_chunk, qtype: str, use_kernels, seed: int) -> None:
    x = _weights(seed=seed)
    ours, ref = quantize(x, qtype, use_kernels=use_kernels), ggml_quantize_chunk(x, qtype)
    if not np.array_equal(ours, ref):
        t = GGML_TYPES[qtype]
        bad = (ours.reshape(-1, t.type_size) != ref.reshape(-1, t.type_size)).any(axis=1)
        pytest.fail(f"{qtype}: {int(bad.sum())} of {bad.size} blocks differ, first {bad.argmax()}")


@pytest.mark.parametrize("qtype", ALL)
def test_round_trip_error_and_layout(qtype: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 2048)).astype(np.float32)
    q = quantize(x, qtype)
    y = gguf.quants.dequantize(q, _gguf_type(qtype)).reshape(x.shape)
    rel = float(np.sqrt(((y - x) ** 2).mean() / (x**2).mean()))
    assert rel < MAX_REL_RMSE[qtype]
    # the same bytes through warmload's own dequantizer: same layout, same values
    from warmload import dequantize

    ours = dequantize(q, qtype, x.shape).numpy()
    np.testing.assert_array_equal(ours, y)


def test_threads_and_input_dtypes_do_not_change_bytes() -> None:
    x = _weights(rows=64, cols=4096)
    one = quantize(x, "Q4_K", threads=1)
    assert np.array_equal(quantize(x, "Q4_K", threads=4), one)
    h = x.astype(np.float16)
    assert np.array_equal(quantize(h, "Q6_K"), quantize(h.astype(np.float32), "Q6_K"))
    assert quantize(x.reshape(2, 32, 4096), "Q8_0").shape == (2, 32, 4096 // 32 * 34)


def test_errors_name_the_problem() -> None:
    with pytest.raises(UnsupportedError, match="multiple of 256"):
        quantize(np.zeros((2, 576), np.float32), "Q4_K")
    with pytest.raises(UnsupportedError, match="supported: F32"):
        quantize(np.zeros((2, 256), np.float32), "IQ2_XXS")
    with pytest.raises(UnsupportedError, match="float16/32/64"):
        quantize(np.zeros((2, 256), np.int32), "Q8_0")
    assert set(QUANTIZERS) >= {*ALL, "F32"}


def _hard_cases(seed: int) -> np.ndarray:
    """Blocks that make the searches branch: ties in |max|, exact halves after scaling, groups
    that are flat, tiny, huge, one-signed or all but one zero, values on quantization grids."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.standard_normal(4096),
        rng.standard_t(2, 4096) * 0.01,
        np.round(rng.standard_normal(4096) * 4) / 8,  # on a coarse grid: ties and exact halves
        np.tile([1.0, -1.0, 0.5, -0.5, 0.0, 0.25, -0.75, 1.0], 512),
        np.where(rng.random(4096) < 0.9, 0.0, rng.standard_normal(4096)),  # sparse
        rng.standard_normal(4096) * 1e-20,  # below GROUP_MAX_EPS
        rng.standard_normal(4096) * 1e4,  # large, still finite in float16
        np.abs(rng.standard_normal(4096)) + 3.0,  # min > 0
        -np.abs(rng.standard_normal(4096)),
        np.full(4096, -2.0),
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
@pytest.mark.parametrize("qtype", K_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_and_numpy_k_quants_agree(qtype: str, seed: int) -> None:
    x = _hard_cases(seed)
    # numpy meets inf and 0/0 on these (as the C does); one thread, as errstate is per thread
    with np.errstate(all="ignore"):
        c, py = quantize(x, qtype), quantize(x, qtype, threads=1, use_kernels=False)
    # the C searches one group at a time (the path of builds without AVX2) give the same bytes
    one = np.empty_like(c)
    kernels.quantize_k(x.reshape(-1, 256), qtype, one.reshape(x.size // 256, -1), simd=False)
    assert np.array_equal(one, c)
    bad = c.reshape(-1, GGML_TYPES[qtype].type_size) != py.reshape(-1, GGML_TYPES[qtype].type_size)
    assert not bad.any(), f"{int(bad.any(axis=1).sum())} blocks differ"
    # float16 input takes the same path (converted per chunk)
    h = x.astype(np.float16)
    with np.errstate(all="ignore"):
        py16 = quantize(h.astype(np.float32), qtype, threads=1, use_kernels=False)
    assert np.array_equal(quantize(h, qtype), py16)


@pytest.mark.peer
@pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
@pytest.mark.parametrize("qtype", K_TYPES)
def test_c_k_quants_bit_exact_on_hard_cases(ggml_quantize_chunk, qtype: str) -> None:
    x = _hard_cases(3)
    assert np.array_equal(quantize(x, qtype, use_kernels=True), ggml_quantize_chunk(x, qtype))


def test_quantize_k_wrapper_rejects_bad_buffers() -> None:
    if not kernels.AVAILABLE:
        pytest.skip("C kernels not built")
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="no K-quant kernel"):
        kernels.quantize_k(x, "Q8_0", np.empty((2, 34), np.uint8))
    with pytest.raises(ValueError, match="float32 in"):
        kernels.quantize_k(x.astype(np.float64), "Q4_K", np.empty((2, 144), np.uint8))
    with pytest.raises(ValueError, match="whole blocks"):
        kernels.quantize_k(x, "Q4_K", np.empty((3, 144), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.quantize_k(np.zeros((256, 2), np.float32).T, "Q4_K", np.empty((2, 144), np.uint8))


@pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
@pytest.mark.parametrize("qtype", K_TYPES)
def test_c_one_group_at_a_time_matches_golden(qtype: str) -> None:
    """The scalar C searches (what builds without AVX2 run) against llama.cpp's bytes."""
    x = _weights()
    out = np.empty((x.size // 256, GGML_TYPES[qtype].type_size), np.uint8)
    kernels.quantize_k(x.reshape(-1, 256), qtype, out, simd=False)
    assert hashlib.sha256(out.tobytes()).hexdigest() == GOLDEN_SHA256[qtype]


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_misaligned_float32_input(qtype: str) -> None:
    """A float32 view at an odd address (a tensor in a mapped file can be one) quantizes like
    an aligned copy."""
    x = _weights(rows=8)
    raw = np.empty(x.nbytes + 1, np.uint8)
    odd = raw[1:].view(np.float32).reshape(x.shape)
    odd[:] = x
    assert not odd.flags.aligned
    assert np.array_equal(quantize(odd, qtype), quantize(x, qtype))
