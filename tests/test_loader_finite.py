"""loader/finite.py: NaN/Inf in float tensors and in every block format's scale fields."""

from __future__ import annotations

import numpy as np
import pytest

from warmload.formats.checkpoint import TensorInfo
from warmload.formats.ggml_types import GGML_TYPES
from warmload.loader.finite import F16_SCALES, F32_SCALES, FLOATS, tensor_problem
from warmload.quant.quantize import quantize


def _info(ggml_type: str, nbytes: int) -> TensorInfo:
    return TensorInfo("t", ggml_type, (1,), 0, nbytes, "f")


@pytest.mark.parametrize("ggml_type", sorted({**F16_SCALES, **F32_SCALES}))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_scale_is_found_in_its_block(ggml_type: str, bad: float) -> None:
    size = GGML_TYPES[ggml_type].type_size
    data = np.zeros(7 * size, np.uint8)
    for offset in F16_SCALES.get(ggml_type, ()):
        assert offset + 2 <= size
        data.reshape(7, size)[:, offset : offset + 2] = np.frombuffer(
            np.float16(0.5).tobytes(), np.uint8
        )
    assert tensor_problem(_info(ggml_type, len(data)), data.tobytes()) is None
    scales = F16_SCALES.get(ggml_type) or F32_SCALES[ggml_type]
    dtype = np.float16 if ggml_type in F16_SCALES else np.float32
    for offset in scales:
        broken = data.copy()
        raw = np.frombuffer(dtype(bad).tobytes(), np.uint8)
        broken[5 * size + offset : 5 * size + offset + len(raw)] = raw
        problem = tensor_problem(_info(ggml_type, len(broken)), broken.tobytes())
        assert problem == f"block 5 has a NaN or Inf scale (byte {offset} of the block)"


@pytest.mark.parametrize("ggml_type", sorted(FLOATS))
def test_float_tensors_are_checked_element_by_element(ggml_type: str) -> None:
    if ggml_type == "BF16":
        values = (np.arange(100, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        values[42] = 0x7FC0  # a BF16 NaN
        data = values.tobytes()
    else:
        dtype = {"F16": np.float16, "F32": np.float32, "F64": np.float64}[ggml_type]
        values = np.arange(100).astype(dtype)
        assert tensor_problem(_info(ggml_type, values.nbytes), values.tobytes()) is None
        values[42] = np.inf
        data = values.tobytes()
    assert tensor_problem(_info(ggml_type, len(data)), data) == "element 42 is NaN or Inf"


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                                       "Q4_K", "Q5_K", "Q6_K"])  # fmt: skip
def test_real_quantized_blocks_are_finite(ggml_type: str) -> None:
    values = np.random.default_rng(0).normal(0, 1, (8, 256)).astype(np.float32)
    data = np.asarray(quantize(values, ggml_type)).tobytes()
    assert tensor_problem(_info(ggml_type, len(data)), data) is None


def test_the_packaged_model_has_no_nan(smollm2_path) -> None:
    from warmload.formats.open import open_checkpoint
    from warmload.loader.finite import nonfinite_tensors

    with open_checkpoint(smollm2_path) as checkpoint:
        assert nonfinite_tensors(checkpoint) == []
