"""quant.quantize_mix: llama.cpp's per-tensor type rules on branches the whole-file tests (a small
llama with GQA 4, see test_quantizer.py) do not reach: MoE, 70B, falcon, GQA < 4, fallbacks."""

from __future__ import annotations

import pytest

from warmload.errors import RequestError, UnsupportedError
from warmload.quant.quantize_mix import (
    MixOptions,
    ModelShape,
    TensorEntry,
    allows_quantization,
    fallback,
    layer_sort_key,
    plan_types,
    use_more_bits,
)


def _model(n_layer: int, embd: int = 256, ff: int = 512, output: bool = True) -> list[TensorEntry]:
    t = [TensorEntry("token_embd.weight", (1000, embd), "F16"),
         TensorEntry("output_norm.weight", (embd,), "F32")]  # fmt: skip
    if output:
        t.append(TensorEntry("output.weight", (1000, embd), "F16"))
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [
            TensorEntry(b + "attn_norm.weight", (embd,), "F32"),
            TensorEntry(b + "attn_q.weight", (embd, embd), "F16"),
            TensorEntry(b + "attn_k.weight", (embd // 2, embd), "F16"),
            TensorEntry(b + "attn_v.weight", (embd // 2, embd), "F16"),
            TensorEntry(b + "attn_output.weight", (embd, embd), "F16"),
            TensorEntry(b + "ffn_down.weight", (embd, ff), "F16"),
            TensorEntry(b + "ffn_up.weight", (ff, embd), "F16"),
            TensorEntry(b + "ffn_gate_inp.weight", (8, embd), "F32"),
        ]
    return t


def test_use_more_bits_matches_llama_cpp_for_32_layers() -> None:
    # i < 4 or i >= 28 or (i - 4) % 3 == 2
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31,
    ]  # fmt: skip


def test_layer_order_is_numeric() -> None:
    names = ["blk.10.attn_q.weight", "output.weight", "blk.2.ffn_up.weight", "blk.2.attn_k.weight"]
    assert sorted(names, key=layer_sort_key) == [
        "output.weight", "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight",
    ]  # fmt: skip


def test_gqa_below_4_and_q2_k() -> None:
    types = plan_types(_model(8), "Q2_K", ModelShape("llama", 8, 8, 4))
    assert types["blk.0.attn_v.weight"] == "Q3_K"  # n_gqa = 2
    assert types["blk.0.ffn_down.weight"] == "Q3_K"
    assert types["blk.0.attn_output.weight"] == "Q3_K"
    assert types["blk.0.attn_q.weight"] == "Q2_K"
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # never quantized
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q2_K"
    gqa4 = plan_types(_model(8), "Q2_K", ModelShape("llama", 8, 8, 2))
    assert gqa4["blk.0.attn_v.weight"] == "Q4_K"


def test_eight_experts_and_70b() -> None:
    moe = plan_types(_model(8), "Q4_K_M", ModelShape("llama", 8, 8, 8, n_expert=8))
    assert moe["blk.3.attn_v.weight"] == "Q8_0" and moe["blk.3.attn_k.weight"] == "Q8_0"
    assert moe["blk.3.attn_output.weight"] == "Q5_K"
    assert moe["blk.0.ffn_down.weight"] == "Q6_K"  # layer taken from the name with experts
    big = plan_types(_model(80), "Q3_K_S", ModelShape("llama", 80, 64, 8))
    assert big["blk.40.attn_v.weight"] == "Q5_K"  # the 70B bump of Q3_K/Q4_K attn_v
    assert big["blk.40.attn_q.weight"] == "Q3_K"


def test_falcon_rules() -> None:
    types = plan_types(_model(16), "Q4_K_M", ModelShape("falcon", 16, 8, 8))
    assert types["output.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "Q6_K"  # i < n/16
    assert types["blk.4.ffn_down.weight"] == "Q5_K"  # use_more_bits
    assert types["blk.5.ffn_down.weight"] == "Q4_K"


def test_tied_embeddings_and_shape_fallbacks() -> None:
    shape = ModelShape("llama", 4, 4, 4)
    types = plan_types(_model(4, embd=576, ff=1536, output=False), "Q4_K_M", shape)
    assert types["token_embd.weight"] == "Q8_0"  # tied, 576 % 256 != 0
    assert types["blk.1.attn_q.weight"] == "Q5_0"  # Q4_K fallback
    assert types["blk.3.attn_v.weight"] == "Q8_0"  # Q6_K (more bits) falls back to Q8_0
    assert types["blk.3.ffn_down.weight"] == "Q6_K"  # rows of 1536: no fallback
    assert types["blk.0.ffn_down.weight"] == "Q4_K"
    odd = TensorEntry("blk.0.attn_q.weight", (48, 48), "F16")
    assert fallback(odd, "Q4_K") == "F16" and fallback(odd, "Q8_0") == "F16"
    assert fallback(TensorEntry("x.weight", (2, 96), "F16"), "Q5_K") == "Q5_1"


def test_overrides() -> None:
    shape = ModelShape("llama", 4, 4, 4)
    opts = MixOptions(pure=True, output_tensor_type="Q4_0", token_embedding_type="Q8_0",
                      tensor_types=(("attn_q", "Q6_K"),))  # fmt: skip
    types = plan_types(_model(4), "Q4_K_M", shape, opts)
    assert types["output.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q6_K"
    assert types["blk.0.attn_v.weight"] == "Q4_K"  # pure: no bump
    f16 = plan_types(_model(4), "F16", shape)
    assert f16["output.weight"] == "F16" and f16["blk.0.attn_norm.weight"] == "F32"


def test_allows_quantization_and_errors() -> None:
    opts = MixOptions(quantize_output_tensor=False)
    assert not allows_quantization(TensorEntry("output.weight", (10, 32), "F16"), opts)
    assert not allows_quantization(TensorEntry("blk.0.attn_q.bias", (32, 32), "F16"), opts)
    assert not allows_quantization(TensorEntry("blk.0.x.weight", (1, 32), "F16"), opts)  # 1-D
    assert allows_quantization(TensorEntry("blk.0.x.weight", (2, 32), "F16"), opts)
    with pytest.raises(UnsupportedError, match="Q9_K"):
        plan_types(_model(1), "Q9_K", ModelShape("llama", 1))
    with pytest.raises(RequestError, match="unknown GGML type"):
        MixOptions(tensor_types=(("x", "Q9"),))
    with pytest.raises(RequestError, match="pattern"):
        MixOptions(tensor_types=(("(", "Q8_0"),))
    assert ModelShape.from_metadata(
        {"general.architecture": "gemma3", "gemma3.block_count": 18,
         "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": [1, 1]}
    ) == ModelShape("gemma3", 18, 4, 1)  # fmt: skip
