"""Dequantization: bit-exact against gguf-py's numpy reference (gguf.quants.dequantize).

Random blocks of every type (finite f16 scales, and fully random bytes compared NaN-aware),
chunk boundaries, every input kind, dtypes, row gathers, typed errors, and every tensor of the
two real models. CUDA tests compare the GPU result with the CPU one and skip without a GPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

import warmload
import warmload.quant.dequant as dq
from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.ggml_types import GGML_TYPES
from warmload.quant.dequant import (
    DEQUANTIZERS,
    F16_FIELDS,
    dequantize,
    dequantize_rows,
    row_nbytes,
)
from warmload.quant.raw import as_byte_tensor

QUANT_TYPES = list(F16_FIELDS)  # Q4_0 .. IQ4_XS: every block type with scales
GGUF_PLAIN = ["F32", "F16", "BF16"]  # plain types gguf-py dequantizes too
NUMPY_PLAIN = {"F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_blocks(name: str, rows: int, row_blocks: int, seed: int = 0) -> np.ndarray:
    """(rows, row_bytes) uint8 of random blocks; f16 scale fields finite (|x| < 2)."""
    rng = np.random.default_rng(seed)
    qtype = GGML_TYPES[name]
    n = rows * row_blocks
    blocks = rng.integers(0, 256, (n, qtype.type_size), dtype=np.uint8)
    for offset in F16_FIELDS.get(name, ()):
        scales = rng.uniform(-2.0, 2.0, n).astype(np.float16)
        scales[::7] = 0.0  # zero scales occur in real files (all-zero blocks)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(n, 2)
    if name in ("F16", "BF16", "F32"):
        values = rng.standard_normal(n, dtype=np.float32)
        if name == "F16":
            blocks = values.astype(np.float16).view(np.uint8).reshape(n, 2)
        elif name == "BF16":
            blocks = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n, 2)
        else:
            blocks = values.view(np.uint8).reshape(n, 4)
    return blocks.reshape(rows, row_blocks * qtype.type_size)


def reference(raw: np.ndarray, name: str) -> np.ndarray:
    """gguf-py's float32 dequantization of (rows, row_bytes) uint8 (numpy for the int types)."""
    if name in NUMPY_PLAIN:
        return raw.view(NUMPY_PLAIN[name]).astype(np.float32)
    with np.errstate(all="ignore"):
        return np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType[name]), np.float32)


def shape_of(raw: np.ndarray, name: str) -> tuple[int, int]:
    qtype = GGML_TYPES[name]
    return raw.shape[0], raw.shape[1] // qtype.type_size * qtype.block_size


def test_dispatch_table_covers_the_required_types() -> None:
    required = QUANT_TYPES + GGUF_PLAIN + list(NUMPY_PLAIN)
    assert sorted(DEQUANTIZERS) == sorted(required)
    for name in DEQUANTIZERS:
        assert name in GGML_TYPES  # sizes come from the one GGML type table


@pytest.mark.parametrize("name", QUANT_TYPES + GGUF_PLAIN + list(NUMPY_PLAIN))
def test_random_blocks_bit_exact(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 5-block chunks over 3 x 7 blocks: chunk edges fall inside and across rows
    monkeypatch.setattr(dq, "CPU_CHUNK_ELEMENTS", 5 * GGML_TYPES[name].block_size)
    raw = random_blocks(name, 3, 7, seed=1)
    if name in NUMPY_PLAIN:
        rng = np.random.default_rng(2)
        values = rng.standard_normal(21) * 1000 if name == "F64" else rng.integers(-100, 100, 21)
        raw = values.astype(NUMPY_PLAIN[name]).view(np.uint8).reshape(3, -1)
    ref = reference(raw, name)
    assert np.isfinite(ref).all()
    got = dequantize(raw, name, shape_of(raw, name))
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
    assert torch.equal(got, torch.from_numpy(ref))


@pytest.mark.parametrize("name", QUANT_TYPES + GGUF_PLAIN)
def test_fully_random_bytes_nan_aware(name: str) -> None:
    qtype = GGML_TYPES[name]
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (4, 300 * qtype.type_size), dtype=np.uint8)
    ref = reference(raw, name)
    got = dequantize(raw, name, shape_of(raw, name)).numpy()
    assert np.array_equal(got, ref, equal_nan=True)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K", "IQ4_XS"])
def test_many_chunks_default_size(name: str) -> None:
    raw = random_blocks(name, 40, 5000 // GGML_TYPES[name].block_size + 1, seed=4)
    assert torch.equal(
        dequantize(raw, name, shape_of(raw, name)), torch.from_numpy(reference(raw, name))
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", ["Q4_1", "Q5_K", "IQ4_NL", "F32", "BF16"])
def test_output_dtype_is_the_float32_result_cast(name: str, dtype: torch.dtype) -> None:
    raw = random_blocks(name, 2, 9, seed=5)
    got = dequantize(raw, name, shape_of(raw, name), dtype=dtype)
    assert got.dtype == dtype
    assert torch.equal(got, torch.from_numpy(reference(raw, name)).to(dtype))


def test_out_argument_is_filled_and_returned() -> None:
    raw = random_blocks("Q4_K", 3, 2)
    shape = shape_of(raw, "Q4_K")
    out = torch.full(shape, float("nan"), dtype=torch.bfloat16)
    got = dequantize(raw, "Q4_K", shape, out=out)
    assert got is out
    assert torch.equal(out, torch.from_numpy(reference(raw, "Q4_K")).to(torch.bfloat16))
    with pytest.raises(ValueError, match="out must be a contiguous tensor of shape"):
        dequantize(raw, "Q4_K", shape, out=torch.empty(shape[1], shape[0]))


def test_every_input_kind_gives_the_same_result_without_warnings() -> None:
    raw = random_blocks("Q5_0", 4, 3)
    shape = shape_of(raw, "Q5_0")
    ref = torch.from_numpy(reference(raw, "Q5_0"))
    readonly = raw.copy()
    readonly.flags.writeable = False
    inputs = [
        raw,
        readonly,
        raw.tobytes(),
        bytearray(raw.tobytes()),
        memoryview(raw.tobytes()),  # read-only buffer, as from an ACCESS_READ mmap
        torch.from_numpy(raw.copy()),
        torch.from_numpy(raw.reshape(-1).copy()).view(torch.int8),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for item in inputs:
            assert torch.equal(dequantize(item, "Q5_0", shape), ref), type(item)
            assert torch.equal(warmload.dequantize(item, "Q5_0", shape), ref)


def test_inputs_are_read_without_copying() -> None:
    arr = random_blocks("Q8_0", 2, 2)
    assert as_byte_tensor(arr).data_ptr() == arr.ctypes.data
    data = bytes(arr.tobytes())
    assert as_byte_tensor(data).data_ptr() == np.frombuffer(data, np.uint8).ctypes.data
    buf = bytearray(data)
    assert as_byte_tensor(memoryview(buf)).data_ptr() == np.frombuffer(buf, np.uint8).ctypes.data


def test_misaligned_input_bytes() -> None:
    raw = random_blocks("Q6_K", 2, 3)
    padded = np.empty(raw.size + 1, np.uint8)
    padded[1:] = raw.reshape(-1)  # starts at an odd address: the f16 views need a realign
    got = dequantize(padded[1:], "Q6_K", shape_of(raw, "Q6_K"))
    assert torch.equal(got, torch.from_numpy(reference(raw, "Q6_K")))


def test_empty_and_higher_rank_shapes() -> None:
    assert dequantize(b"", "Q4_0", (0, 64)).shape == (0, 64)
    raw = random_blocks("Q8_0", 6, 2)
    got = dequantize(raw, "Q8_0", (2, 3, 64))
    assert torch.equal(got.view(6, 64), torch.from_numpy(reference(raw, "Q8_0")))


def test_type_names_are_case_insensitive_and_enums_work() -> None:
    raw = random_blocks("Q6_K", 1, 1)
    ref = dequantize(raw, "Q6_K", (1, 256))
    assert torch.equal(dequantize(raw, "q6_k", (1, 256)), ref)
    assert torch.equal(dequantize(raw, GGMLQuantizationType.Q6_K, (1, 256)), ref)


def test_unsupported_types_name_what_is_supported() -> None:
    for name in ("IQ2_XXS", "Q8_1", "TQ1_0", "nonsense"):
        with pytest.raises(UnsupportedError, match="supported: .*Q4_K.*IQ4_XS"):
            dequantize(b"\0" * 64, name, (1, 256))


def test_size_and_shape_errors_give_the_numbers() -> None:
    raw = random_blocks("Q4_K", 2, 1)
    with pytest.raises(CheckpointError, match=r"needs 288 bytes \(2 blocks of 144 bytes\).*287"):
        dequantize(raw.reshape(-1)[:-1], "Q4_K", (2, 256))
    with pytest.raises(CheckpointError, match=r"last dimension \(100\).*block size \(256\)"):
        dequantize(raw, "Q4_K", (2, 100))
    with pytest.raises(TypeError, match="floating-point"):
        dequantize(raw, "Q4_K", (2, 256), dtype=torch.int32)
    assert row_nbytes("Q4_K", 512) == 288
    assert row_nbytes("F16", 10) == 20


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "IQ4_NL", "F16"])
def test_dequantize_rows_equals_rows_of_the_full_tensor(name: str) -> None:
    raw = random_blocks(name, 50, 3, seed=6)
    shape = shape_of(raw, name)
    full = dequantize(raw, name, shape)
    rows = torch.tensor([[0, 49, 7], [7, 3, 0]])
    got = dequantize_rows(raw, name, shape, rows)
    assert got.shape == (2, 3, shape[1])
    assert torch.equal(got, full[rows])
    got32 = dequantize_rows(raw, name, shape, rows.to(torch.int32), dtype=torch.bfloat16)
    assert torch.equal(got32, full[rows].to(torch.bfloat16))
    assert dequantize_rows(raw, name, shape, torch.tensor([], dtype=torch.long)).shape == (
        0,
        shape[1],
    )


def test_dequantize_rows_checks_the_range() -> None:
    raw = random_blocks("Q8_0", 5, 1)
    with pytest.raises(IndexError, match="row 5 out of range for 5 rows"):
        dequantize_rows(raw, "Q8_0", (5, 32), torch.tensor([1, 5]))
    with pytest.raises(IndexError, match="row -1 out of range"):
        dequantize_rows(raw, "Q8_0", (5, 32), torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer tensor"):
        dequantize_rows(raw, "Q8_0", (5, 32), torch.tensor([1.0]))


# -- the real models: every tensor, against gguf-py on the same bytes -------------------------

SAMPLE_ROWS = 256


def _rows_of(raw: np.ndarray, info: object) -> np.ndarray:
    return raw.reshape(-1, row_nbytes(info.ggml_type, info.shape[-1]))


def _compare_full(ck: object, info: object) -> None:
    """dequantize(whole tensor) == gguf-py on the whole tensor."""
    mv = ck.tensor_bytes(info.name)
    got = dequantize(mv, info.ggml_type, info.shape)
    ref = reference(_rows_of(np.frombuffer(mv, np.uint8), info), info.ggml_type)
    assert torch.equal(got, torch.from_numpy(ref.reshape(info.shape))), info.name


def _compare_rows(ck: object, info: object) -> None:
    """dequantize_rows on a deterministic sample of rows (first and last included) == gguf-py
    on the same rows' bytes."""
    mv = ck.tensor_bytes(info.name)
    raw = _rows_of(np.frombuffer(mv, np.uint8), info)
    n = raw.shape[0]
    sample = np.random.default_rng(7).choice(n, min(n, SAMPLE_ROWS), replace=False)
    rows = np.unique(np.concatenate([[0, n - 1], sample]))
    got = dequantize_rows(mv, info.ggml_type, info.shape, torch.from_numpy(rows))
    assert torch.equal(got, torch.from_numpy(reference(raw[rows], info.ggml_type))), info.name


def _count_types(ck: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in ck.tensors.values():
        counts[info.ggml_type] = counts.get(info.ggml_type, 0) + 1
    return counts


def test_every_tensor_of_smollm2_in_full(smollm2_path: object) -> None:
    with warmload.open_checkpoint(smollm2_path) as ck:
        assert _count_types(ck) == {"Q8_0": 1, "Q4_1": 210, "F32": 61}
        for info in ck.tensors.values():
            _compare_full(ck, info)


def test_every_tensor_of_gemma3(gemma3_path: object) -> None:
    # 250 MB with a 262144 x 640 embedding: gguf-py would take long on all of it, so every
    # tensor is checked on sampled rows and the first tensor of each type in full.
    with warmload.open_checkpoint(gemma3_path) as ck:
        assert _count_types(ck) == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
        first: dict[str, object] = {}
        for info in ck.tensors.values():
            _compare_rows(ck, info)
            if info.nbytes < 16 << 20:
                first.setdefault(info.ggml_type, info)
        assert sorted(first) == ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]
        for info in first.values():
            _compare_full(ck, info)


# -- CUDA: same bits as the CPU path, computed on the tensor's device -------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", QUANT_TYPES + GGUF_PLAIN + list(NUMPY_PLAIN))
def test_cuda_matches_cpu(name: str) -> None:
    raw = random_blocks(name, 8, 33, seed=8)
    shape = shape_of(raw, name)
    cpu = dequantize(raw, name, shape)
    gpu = dequantize(torch.from_numpy(raw).cuda(), name, shape)
    assert gpu.is_cuda
    assert torch.equal(gpu.cpu(), cpu)
    half = dequantize(torch.from_numpy(raw).cuda(), name, shape, dtype=torch.float16)
    assert torch.equal(half.cpu(), cpu.to(torch.float16))


@pytest.mark.cuda
@cuda
def test_cuda_dequantize_rows() -> None:
    raw = random_blocks("Q6_K", 40, 2, seed=9)
    shape = shape_of(raw, "Q6_K")
    rows = torch.tensor([3, 39, 0, 3])
    got = dequantize_rows(torch.from_numpy(raw).cuda(), "Q6_K", shape, rows.cuda())
    assert got.is_cuda
    assert torch.equal(got.cpu(), dequantize(raw, "Q6_K", shape)[rows])
