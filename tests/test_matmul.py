"""Packed quantized kernels (warmload.quant.matmul, kernels/_cpu.c) against exact references.

In a decode step (one token per sequence) integer-path types quantize each activation row to
8-bit blocks of 32 (d = max|x| / 127, q = round(x * (1 / d))) as llama.cpp does; the reference
does the same in torch and multiplies by the weights dequantized with warmload.quant.dequant
(bit-identical to gguf-py), so the kernel must match it to float rounding. Float-path types and
prompt chunks (rows dequantized in C, or torch's GEMM) must match the plain float product.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from warmload import kernels
from warmload.quant import matmul as quant_matmul
from warmload.quant.dequant import dequantize
from warmload.quant.matmul import GEMM_TOKENS, PREFILL_TOKENS, QuantEmbedding, QuantLinear
from warmload.quant.quantize import QUANTIZERS, quantize

INT8_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
FLOAT_TYPES = ["Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "F16", "BF16"]
# types with an integer prompt product (kernels/gemm.c), in every variant but the generic one
PROMPT_INT8_TYPES = [
    "Q2_K",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q3_K",
    "IQ4_NL",
    "IQ4_XS",
]
N, K = 72, 512


pytestmark = pytest.mark.usefixtures("kernel_variant")  # every test on every variant


def test_the_extension_is_built(kernel_variant: str):
    """make install compiles it (setup.py); without it every product would run dequantized."""
    assert kernels.AVAILABLE, "warmload/kernels/*.c were not built: make install"
    assert kernels.VARIANT == kernel_variant
    assert set(kernels.KERNEL_TYPES) == set(INT8_TYPES + FLOAT_TYPES)
    int8 = {t for t, kind in kernels.KERNEL_TYPES.items() if kind == "int8"}
    if kernel_variant == "generic":  # no integer product: everything dequantizes
        assert not kernels.GEMM_TYPES and not kernels.DECODE_TAKES_GEMM and not int8
        return
    expected = set(PROMPT_INT8_TYPES)
    if kernel_variant in ("neon", "dotprod", "i8mm"):  # Q2_K stays dequantized on ARM
        expected.discard("Q2_K")
    # decode steps take the prompt products' arithmetic
    assert kernels.GEMM_TYPES == expected and kernels.DECODE_TAKES_GEMM
    assert int8 == expected


@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (1, 19)])
@pytest.mark.parametrize("ggml_type", INT8_TYPES + FLOAT_TYPES)
def test_each_variant_agrees_with_the_generic_one(ggml_type: str, shape: tuple[int, int]):
    """The same products and dequantized weights as the plain C build: bit for bit where both
    dequantize, to float rounding where this variant quantizes x to 8 bits (the generic build's
    float product of the same 8-bit x)."""
    blocks = random_blocks(ggml_type, seed=31 + shape[0])
    x = torch.randn(shape[0] * shape[1], K, generator=torch.Generator().manual_seed(9))
    x[:, 7] *= 50.0
    mode = "int8" if shape[1] == 1 else "gemm"
    got = kernels.quantized_matmul(x, [(blocks, ggml_type)], mode)[0]
    weight = kernels.dequantize(blocks, ggml_type, torch.empty(N, K))
    int8 = seen_as_int8(ggml_type, shape[1])
    with kernels.use_variant("generic"):
        plain = kernels.dequantize(blocks, ggml_type, torch.empty(N, K))
        seen = quantized_activations(x) if int8 else x
        want = kernels.quantized_matmul(seen.contiguous(), [(blocks, ggml_type)], "float")[0]
    assert torch.equal(weight, plain)
    assert relative_error(got, want) < 1e-5


def seen_as_int8(ggml_type: str, tokens: int) -> bool:
    """Whether a product of `tokens` rows per sequence quantizes x to 8 bits (else float)."""
    if tokens == 1:
        return kernels.KERNEL_TYPES[ggml_type] == "int8"
    long_ok = quant_matmul.long_prompts_take_integer_product()
    return (tokens < GEMM_TOKENS or long_ok) and ggml_type in kernels.GEMM_TYPES


def seen_as_bf16(ggml_type: str, tokens: int) -> bool:
    """Whether a product of `tokens` rows per sequence runs torch's bfloat16 GEMM (AMX CPUs)."""
    in_torch = tokens >= PREFILL_TOKENS and not seen_as_int8(ggml_type, tokens)
    return in_torch and quant_matmul.bf16_gemm_for(ggml_type)


def cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def random_blocks(ggml_type: str, seed: int) -> torch.Tensor:
    """(N, row_nbytes) blocks: quantized Gaussian weights, or for IQ4 types random bytes with
    valid fp16 scales (our quantizer does not write IQ4)."""
    rng = np.random.default_rng(seed)
    if ggml_type in QUANTIZERS:
        w = rng.standard_normal((N, K)).astype(np.float32)
        return torch.from_numpy(quantize(w, ggml_type, threads=1))
    block, size = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}[ggml_type]
    raw = rng.integers(0, 256, (N * K // block, size), dtype=np.uint8)
    raw[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return torch.from_numpy(raw).view(N, -1)


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(x.shape[0], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(d > 0, 1 / torch.where(d > 0, d, 1), 0)
    return (torch.round(blocks * inverse) * d).reshape(x.shape)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


# (sequences, tokens each): decode steps (one token per sequence) and prompt chunks
SHAPES = [(1, 1), (3, 1), (8, 1), (1, 3), (1, PREFILL_TOKENS - 1), (2, 21)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ggml_type", INT8_TYPES + FLOAT_TYPES)
def test_product_matches_the_dequantized_reference(ggml_type: str, shape: tuple[int, int]):
    blocks = random_blocks(ggml_type, seed=len(ggml_type) + sum(shape))
    weight = dequantize(blocks, ggml_type, (N, K))
    x = torch.randn(*shape, K, generator=torch.Generator().manual_seed(sum(shape)))
    x[..., 7] *= 50.0  # an outlier channel, as real hidden states have
    got = QuantLinear(blocks, ggml_type, K)(x)
    rows = x.reshape(-1, K)
    assert got.shape == (*shape, N)
    if seen_as_bf16(ggml_type, shape[1]):
        want = (rows.bfloat16() @ weight.bfloat16().T).float()
        assert relative_error(got.reshape(-1, N), want) < 2**-8
        return
    x_seen = quantized_activations(rows) if seen_as_int8(ggml_type, shape[1]) else rows
    assert relative_error(got.reshape(-1, N), x_seen @ weight.T) < 1e-5


@pytest.mark.parametrize("shape", [(1, 1), (5, 1)])
@pytest.mark.parametrize("ggml_type", INT8_TYPES)
def test_row_dots_match_the_reference(ggml_type: str, shape: tuple[int, int]):
    """The AVX2 per-row integer dots (decode steps take the many-token product instead), asked
    for by name so that they are checked on every variant with AVX2."""
    if not any(kind == "int8" for kind in kernels.KERNEL_TYPES.values()):
        pytest.skip("no integer row dots in this variant (no AVX2)")
    blocks = random_blocks(ggml_type, seed=21)
    x = torch.randn(shape[0], K, generator=torch.Generator().manual_seed(7))
    x[:, 7] *= 50.0
    got = kernels.quantized_matmul(x, [(blocks, ggml_type)], "row_dots")[0]
    want = quantized_activations(x) @ dequantize(blocks, ggml_type, (N, K)).T
    assert relative_error(got, want) < 1e-5
    alone = [
        kernels.quantized_matmul(x[i : i + 1], [(blocks, ggml_type)], "row_dots")[0]
        for i in range(shape[0])
    ]
    assert torch.equal(got, torch.cat(alone))


@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q5_0", "Q8_0", "Q4_K"])
def test_a_rows_result_does_not_depend_on_its_batch(ggml_type: str):
    """5 decode rows: taken 4 (AVX2 row dots) or 4 + 1 (AVX-512 products) per weight unpack."""
    blocks = random_blocks(ggml_type, seed=11)
    layer = QuantLinear(blocks, ggml_type, K)
    x = torch.randn(5, 1, K, generator=torch.Generator().manual_seed(1))
    together = layer(x)
    assert all(torch.equal(together[i], layer(x[i : i + 1])[0]) for i in range(5))


@pytest.mark.parametrize("tokens", [11, 47])
@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q6_K", "IQ4_XS", "Q2_K", "Q3_K"])
def test_a_prompt_tokens_result_does_not_depend_on_its_chunk(ggml_type: str, tokens: int):
    """The integer prompt product takes tokens 8 at a time over each unpacked row, then 4, 2,
    1: every token's sums run in one order, so a chunk equals each token alone."""
    if ggml_type not in kernels.GEMM_TYPES:
        pytest.skip("no integer prompt product in this variant (no AVX2)")
    blocks = random_blocks(ggml_type, seed=12)
    x = torch.randn(tokens, K, generator=torch.Generator().manual_seed(5))
    weights = [(blocks, ggml_type)]
    together = kernels.quantized_matmul(x, weights, "gemm")[0]
    alone = [kernels.quantized_matmul(x[i : i + 1], weights, "gemm")[0] for i in range(tokens)]
    assert torch.equal(together, torch.cat(alone))


@pytest.mark.parametrize(
    ("ggml_type", "k"),
    [(t, k) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") for k in (800, 832, 1056)]
    + [(t, k) for t in ("Q4_K", "Q5_K") for k in (768, 1280)],
)
def test_rows_with_a_part_group_match_the_reference_and_their_batch(ggml_type: str, k: int):
    """Rows whose blocks do not fill whole groups of 16 (gemm.c row_grouped, row_q45_k): the
    last blocks take the per-lane way, an odd last one alone; a token's bits still do not
    depend on how many tokens share the call."""
    rng = np.random.default_rng(k)
    blocks = torch.from_numpy(
        quantize(rng.standard_normal((40, k)).astype(np.float32), ggml_type, threads=1)
    )
    x = torch.randn(11, k, generator=torch.Generator().manual_seed(k))
    x[:, 7] *= 50.0
    got = kernels.quantized_matmul(x, [(blocks, ggml_type)], "int8")[0]
    x_seen = quantized_activations(x) if seen_as_int8(ggml_type, 1) else x
    want = x_seen @ dequantize(blocks, ggml_type, (40, k)).T
    assert relative_error(got, want) < 1e-5
    alone = [
        kernels.quantized_matmul(x[i : i + 1], [(blocks, ggml_type)], "int8")[0] for i in range(11)
    ]
    assert torch.equal(got, torch.cat(alone))


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q5_1", "Q8_0", "Q5_K", "Q6_K", "IQ4_NL", "Q2_K"])
def test_decode_steps_and_short_prompts_share_one_arithmetic(ggml_type: str):
    """In every variant with the integer product a token's product is the same bits as a
    decode step, in a batch of decode steps, or inside a prompt chunk."""
    if not kernels.DECODE_TAKES_GEMM:
        pytest.skip("no integer product in this variant (generic build)")
    layer = QuantLinear(random_blocks(ggml_type, seed=13), ggml_type, K)
    x = torch.randn(1, 13, K, generator=torch.Generator().manual_seed(6))
    chunk = layer(x)[0]
    batch = layer(x.transpose(0, 1))[:, 0]  # 13 sequences, one decode step each
    steps = torch.cat([layer(x[:, i : i + 1])[0] for i in range(13)])
    assert torch.equal(chunk, batch) and torch.equal(chunk, steps)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("slice_rows", [None, 10])
@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q6_K", "F16"])
def test_long_prompt_chunks_use_torchs_gemm(ggml_type: str, slice_rows, bf16: bool, monkeypatch):
    """float32 GEMM, or where AMX makes it 5x faster bfloat16 (forced here on any CPU), except
    for F16 weights, which bfloat16 would round (variants whose integer product beats the
    float32 GEMM take it instead: test below)."""
    monkeypatch.setattr(quant_matmul, "AMX_BF16_GEMM", bf16)
    monkeypatch.setattr(kernels, "LONG_PROMPTS_INTEGER", False)
    if slice_rows:  # the weight is dequantized 10 rows at a time
        monkeypatch.setattr(quant_matmul, "SCRATCH_FLOATS", slice_rows * K)
    blocks = random_blocks(ggml_type, seed=3)
    tokens = max(GEMM_TOKENS, PREFILL_TOKENS)
    x = torch.randn(2, tokens, K, generator=torch.Generator().manual_seed(2))
    got = QuantLinear(blocks, ggml_type, K)(x)
    w = dequantize(blocks, ggml_type, (N, K))
    assert got.shape == (2, tokens, N) and got.dtype == torch.float32
    assert quant_matmul.bf16_gemm_for(ggml_type) == (bf16 and ggml_type != "F16")
    if quant_matmul.bf16_gemm_for(ggml_type):
        want = (x.bfloat16() @ w.bfloat16().T).float()
        assert relative_error(got, want) < 2**-8  # outputs rounded to bfloat16
        assert 1e-4 < relative_error(got, x @ w.T) < 1e-2
    else:
        assert relative_error(got, x @ w.T) < 1e-6


@pytest.mark.parametrize("amx", [False, True])
@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q6_K", "F16"])
def test_long_prompts_take_the_integer_product_where_it_is_faster(
    ggml_type: str, amx: bool, monkeypatch
):
    """Where the variant's integer product measured faster than torch's float32 GEMM and there
    are no AMX tiles, chunks of GEMM_TOKENS+ tokens take it (8-bit x, no float weight copy),
    and a token's bits are those of the same token in a short chunk."""
    monkeypatch.setattr(quant_matmul, "AMX_BF16_GEMM", amx)
    monkeypatch.setattr(kernels, "LONG_PROMPTS_INTEGER", kernels.DECODE_TAKES_GEMM)
    blocks = random_blocks(ggml_type, seed=23)
    layer = QuantLinear(blocks, ggml_type, K)
    x = torch.randn(1, GEMM_TOKENS + 5, K, generator=torch.Generator().manual_seed(4))
    got = layer(x)[0]
    integer = kernels.DECODE_TAKES_GEMM and not amx and ggml_type in kernels.GEMM_TYPES
    assert quant_matmul.long_prompts_take_integer_product() == (
        kernels.DECODE_TAKES_GEMM and not amx
    )
    w = dequantize(blocks, ggml_type, (N, K))
    if integer:
        assert relative_error(got, quantized_activations(x[0]) @ w.T) < 1e-5
        assert torch.equal(got[-5:], layer(x[:, -5:])[0])  # a short chunk of the same tokens
    elif not quant_matmul.bf16_gemm_for(ggml_type):
        assert relative_error(got, x[0] @ w.T) < 1e-6


@pytest.mark.parametrize("ggml_type", INT8_TYPES + FLOAT_TYPES)
def test_bf16_dequantization_rounds_to_nearest_even(ggml_type: str):
    """The weights of the bfloat16 GEMM: the float32 dequantization, rounded as torch rounds."""
    blocks = random_blocks(ggml_type, seed=19)
    got = kernels.dequantize(blocks, ggml_type, torch.empty(N, K, dtype=torch.bfloat16))
    assert torch.equal(got, kernels.dequantize(blocks, ggml_type, torch.empty(N, K)).bfloat16())
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        kernels.dequantize(blocks, ggml_type, torch.empty(N, K, dtype=torch.float16))


def test_integer_prompt_tokens_needs_every_packed_type():
    """The forward hook keeps torch on one thread below this many tokens (all in the kernels)."""
    if not kernels.GEMM_TYPES:
        assert quant_matmul.integer_prompt_tokens(["Q4_0"]) == 0
        return
    assert quant_matmul.integer_prompt_tokens(["Q4_1", "Q8_0"]) == GEMM_TOKENS
    assert quant_matmul.integer_prompt_tokens(["Q4_1", "F16"]) == 0  # F16 prompts go to torch
    assert quant_matmul.integer_prompt_tokens([]) == 0  # nothing packed


def test_threads_do_not_change_results():
    blocks = random_blocks("Q4_K", seed=5)
    layer = QuantLinear(blocks, "Q4_K", K)
    x = torch.randn(4, 1, K, generator=torch.Generator().manual_seed(3))
    try:
        kernels.set_threads(1)
        one = layer(x)
        kernels.set_threads(3)
        three = layer(x)
    finally:
        kernels.set_threads(torch.get_num_threads())
    assert torch.equal(one, three)


@pytest.mark.parametrize("ggml_type", INT8_TYPES + FLOAT_TYPES)
def test_the_c_dequantizers_are_bit_identical_to_the_reference(ggml_type: str):
    """kernels.dequantize (the float path's blocks, prompt GEMM slices) against
    quant.dequant, itself bit-identical to gguf-py."""
    blocks = random_blocks(ggml_type, seed=17)
    got = kernels.dequantize(blocks, ggml_type, torch.empty(N, K))
    assert torch.equal(got, dequantize(blocks, ggml_type, (N, K)))


def test_embedding_dequantizes_only_gathered_rows_and_ties_to_the_output():
    blocks = random_blocks("Q8_0", seed=9)
    embedding = QuantEmbedding(blocks, "Q8_0", K)
    ids = torch.tensor([[3, 0, 71], [5, 5, 2]])
    table = dequantize(blocks, "Q8_0", (N, K))
    assert torch.equal(embedding(ids), table[ids])
    head = embedding.as_linear()
    assert head.blocks is embedding.blocks and head.out_features == N


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_matches_torch(offset: float):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 576, generator=g) * 7
    w = torch.randn(576, generator=g)
    want = torch.nn.functional.rms_norm(x, (576,), w + offset, 1e-6)
    assert torch.allclose(kernels.rms_norm(x, w, 1e-6, offset), want, rtol=1e-5, atol=1e-6)


def test_bad_layers_are_refused():
    blocks = random_blocks("Q4_0", seed=1)
    with pytest.raises(ValueError, match="no packed kernel"):
        QuantLinear(blocks, "IQ1_S", K)
    with pytest.raises(ValueError, match="take 288 bytes"):
        QuantLinear(blocks[:, :-18].contiguous(), "Q4_0", K)
    with pytest.raises(ValueError, match="contiguous"):
        QuantLinear(blocks.float(), "Q4_0", K)
