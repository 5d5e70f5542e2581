"""Phi-3 / Phi-3.5 mini (dense): the llama decoder with one qkv_proj and one gate_up_proj, rope
over halves, an optional sliding window on every layer.

Reference: transformers models/phi3/modeling_phi3.py (qkv_proj split q | k | v, gate_up_proj
split gate | up, `up * act(gate)`) and configuration_phi3.py (sliding_window,
partial_rotary_factor, longrope); llama.cpp src/models/phi3.cpp (LLM_ARCH_PHI3, NEOX rope,
`blk.N.attn_qkv`, `blk.N.ffn_up` holding gate and up, `phi3.attention.sliding_window`).
Refused, by name: longrope / su scaling (the 128k variants, whose rope_factors_long/short
tensors and attention factor we do not compute) and partial rotary factors below 1 (Phi-4-mini).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from warmload.models import llama
from warmload.models.base import DecoderLM, build_decoder
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import LlamaConfig
from warmload.models.rope import rope_from_gguf, rope_from_hf

ARCH = "phi3"


def build_model(config: LlamaConfig, device: str | torch.device = "meta") -> DecoderLM:
    """The llama specs with fused qkv and gate_up projections."""
    specs = tuple(replace(s, fused_qkv=True, fused_gate_up=True) for s in llama.layer_specs(config))
    return build_decoder(config, specs, device)


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> LlamaConfig:
    for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if name in tensors:
            keys.refuse("rope.scaling.type", "longrope", f"tensor {name!r} (128k Phi-3 variants)")
    theta, scaling = rope_from_gguf(keys, 10000.0)
    config = LlamaConfig(
        **llama.gguf_common(keys, tensors, tokens),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_style="neox",
        sliding_window=keys.optional_int("attention.sliding_window"),
    )
    check_decoder(config, keys.where)
    return config


def config_from_hf(f: HFFields) -> LlamaConfig:
    """transformers Phi3Config (its defaults where config.json leaves a field out)."""
    llama.refuse_biases(f)
    params = f.get("rope_parameters", None) or f.get("rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type")) if isinstance(params, dict) else None
    if kind in ("longrope", "su", "yarn"):
        f.refuse("rope_scaling", kind, "longrope/su scaling (128k Phi-3) is not supported")
    factor = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    factor = f.get("partial_rotary_factor", factor if factor is not None else 1.0)
    if factor != 1.0:
        f.refuse("partial_rotary_factor", factor, "partial rope is not supported")
    theta, scaling = rope_from_hf(f, 10000.0)
    defaults = {"vocab_size": 32064, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
    config = LlamaConfig(
        **llama.hf_common(f, LlamaConfig, defaults),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=f.optional_int("sliding_window"),
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: LlamaConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """Phi3MiniModel.set_gguf_parameters: the llama keys under `phi3.`, the window if any."""
    return llama.gguf_metadata(config, ARCH)


def gguf_tensor(name: str, x: np.ndarray, config: LlamaConfig) -> np.ndarray:
    return x  # neox rope, fused matrices stored as HF stores them


# gguf-py constants.py MODEL_TENSORS[PHI3]
GGUF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_qkv.weight": "model.layers.{i}.self_attn.qkv_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.gate_up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
