"""Qwen2 / Qwen2.5 (incl. Qwen2.5-Coder): the llama decoder with q/k/v biases, rope over
halves (neox) in GGUF too, and an optional sliding window on the upper layers.

Reference: transformers models/qwen2/modeling_qwen2.py (q_proj/k_proj/v_proj with bias=True,
o_proj without) and configuration_qwen2.py (use_sliding_window, max_window_layers,
layer_types); llama.cpp src/models/qwen2.cpp (LLM_ARCH_QWEN2: LLAMA_ROPE_TYPE_NEOX, biases
`blk.N.attn_{q,k,v}.bias`) and convert_hf_to_gguf.py Qwen2Model (no q/k permutation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmload.models import llama
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import FULL, SLIDING, LlamaConfig, build_model
from warmload.models.rope import rope_from_gguf, rope_from_hf

__all__ = ["GGUF_TENSOR_NAMES", "build_model", "config_from_gguf", "config_from_hf"]
ARCH = "qwen2"


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> LlamaConfig:
    theta, scaling = rope_from_gguf(keys, 10000.0)
    config = LlamaConfig(
        **llama.gguf_common(keys, tensors, tokens),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_style="neox",  # LLAMA_ROPE_TYPE_NEOX: the converter does not permute q/k
        attention_bias=True,
    )
    check_decoder(config, keys.where)
    return config


def sliding_layers(f: HFFields, n_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) of Qwen2/Qwen3 configs: a window only with
    use_sliding_window, on layer_types' sliding layers or those from max_window_layers on."""
    if not f.boolean("use_sliding_window", False):
        return None, None
    window = f.integer("sliding_window", 4096, maximum=1 << 31)
    types = f.str_list("layer_types", n_layers, (SLIDING, FULL))
    if types is None:
        first = f.integer("max_window_layers", 28, minimum=0, maximum=1 << 16)
        types = tuple(SLIDING if i >= first else FULL for i in range(n_layers))
    return window, types


def config_from_hf(f: HFFields) -> LlamaConfig:
    """transformers Qwen2Config (biases are always on: Qwen2Attention hard-codes them)."""
    llama.refuse_biases(f, attention_bias_ok=True)
    theta, scaling = rope_from_hf(f, 10000.0)
    common = llama.hf_common(
        f, LlamaConfig, {"vocab_size": 151936, "max_position_embeddings": 32768}
    )
    window, types = sliding_layers(f, common["num_hidden_layers"])
    config = LlamaConfig(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_types=types,
        attention_bias=True,
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: LlamaConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """Qwen2Model.set_gguf_parameters (the llama keys under `qwen2.`)."""
    return llama.gguf_metadata(config, ARCH)


def gguf_tensor(name: str, x: np.ndarray, config: LlamaConfig) -> np.ndarray:
    return x  # neox rope: stored as HF stores it


# gguf-py constants.py MODEL_TENSORS[QWEN2]
GGUF_TENSOR_NAMES = {
    **llama.GGUF_TENSOR_NAMES,
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
}
