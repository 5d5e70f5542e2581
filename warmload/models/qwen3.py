"""Qwen3 (dense): the llama decoder with per-head RMSNorm of q and k before rope, an explicit
head_dim, no biases by default, rope over halves (neox) in GGUF too.

Reference: transformers models/qwen3/modeling_qwen3.py (q_norm/k_norm: Qwen3RMSNorm(head_dim)
on q and k per head, then rope) and configuration_qwen3.py (head_dim 128, attention_bias,
use_sliding_window); llama.cpp src/models/qwen3.cpp (LLM_ARCH_QWEN3, `blk.N.attn_q_norm`,
`blk.N.attn_k_norm`, LLAMA_ROPE_TYPE_NEOX).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmload.models import llama
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import LlamaConfig, build_model
from warmload.models.qwen2 import GGUF_TENSOR_NAMES as QWEN2_NAMES
from warmload.models.qwen2 import gguf_tensor, sliding_layers
from warmload.models.rope import rope_from_gguf, rope_from_hf

__all__ = ["GGUF_TENSOR_NAMES", "build_model", "config_from_gguf", "config_from_hf", "gguf_tensor"]
ARCH = "qwen3"


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> LlamaConfig:
    theta, scaling = rope_from_gguf(keys, 1_000_000.0)
    config = LlamaConfig(
        **llama.gguf_common(keys, tensors, tokens),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_style="neox",
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm=True,
    )
    check_decoder(config, keys.where)
    return config


def config_from_hf(f: HFFields) -> LlamaConfig:
    """transformers Qwen3Config (its defaults where config.json leaves a field out)."""
    llama.refuse_biases(f, attention_bias_ok=True)
    theta, scaling = rope_from_hf(f, 10000.0)
    common = llama.hf_common(
        f, LlamaConfig, {"vocab_size": 151936, "max_position_embeddings": 32768}
    )
    common["head_dim"] = f.integer("head_dim", 128)
    window, types = sliding_layers(f, common["num_hidden_layers"])
    config = LlamaConfig(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_types=types,
        attention_bias=f.boolean("attention_bias", False),
        qk_norm=True,
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: LlamaConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """Qwen3Model.set_gguf_parameters (the llama keys under `qwen3.`, head_dim explicit)."""
    meta, freqs = llama.gguf_metadata(config, ARCH)
    meta[f"{ARCH}.attention.key_length"] = meta[f"{ARCH}.attention.value_length"] = config.head_dim
    return meta, freqs


# gguf-py constants.py MODEL_TENSORS[QWEN3] (biases only when attention_bias)
GGUF_TENSOR_NAMES = {
    **QWEN2_NAMES,
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
}
