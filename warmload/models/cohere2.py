"""Cohere2 (Command R7B, the tiny-aya family): LayerNorm without bias, attention and MLP in
parallel from one normed input, logits times logit_scale, and rope (adjacent pairs) only on the
sliding-window layers; every 4th layer is global and has no position encoding at all.

Reference: transformers models/cohere2/modeling_cohere2.py (Cohere2LayerNorm: mean-centred,
weight only, float32; rotate_half over interleaved pairs; rope applied only when the layer has
a sliding window; x + attn(norm(x)) + mlp(norm(x)); logits * logit_scale) and
configuration_cohere2.py (layer_types, sliding_window_pattern 4 by default, head_dim =
hidden / heads); llama.cpp src/models/cohere2-iswa.cpp and LLM_ARCH_COHERE2 hparams
(`cohere2.logit_scale`, `cohere2.attention.layer_norm_epsilon`, swa pattern 4, NORM rope: no
permutation). LayerNorm and parallel blocks are beyond the C plan: Cohere2 runs on the modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from warmload.models.base import DecoderLM, LayerSpec, build_decoder, rope_spec
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import FULL, SLIDING, gguf_common, hf_common, refuse_biases
from warmload.models.rope import rope_from_gguf, rope_from_hf, rope_to_gguf

ARCH = "cohere2"
PATTERN = 4  # llama.cpp's fixed swa pattern: layers 3, 7, ... are global


@dataclass(frozen=True, slots=True)
class Cohere2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    sliding_window: int = 4096
    layer_types: tuple[str, ...] | None = None  # None: every PATTERN-th layer global
    logit_scale: float = 0.0625
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        if self.layer_types is None:
            n = self.num_hidden_layers
            types = tuple(SLIDING if (i + 1) % PATTERN else FULL for i in range(n))
            object.__setattr__(self, "layer_types", types)


def layer_specs(c: Cohere2Config) -> tuple[LayerSpec, ...]:
    rope = rope_spec(c.rope_theta, c.rope_scaling, "interleaved")
    return tuple(
        LayerSpec(
            norm="layer",
            norm_eps=c.layer_norm_eps,
            parallel=True,
            activation=c.hidden_act,
            window=c.sliding_window if kind == SLIDING else None,
            rope=rope if kind == SLIDING else None,
            scale=c.head_dim**-0.5,
        )
        for kind in c.layer_types  # type: ignore[union-attr]
    )


def build_model(config: Cohere2Config, device: str | torch.device = "meta") -> DecoderLM:
    return build_decoder(config, layer_specs(config), device, logit_scale=config.logit_scale)


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> Cohere2Config:
    common = gguf_common(keys, tensors, tokens, eps_key="attention.layer_norm_epsilon")
    common["layer_norm_eps"] = common.pop("rms_norm_eps")
    theta, scaling = rope_from_gguf(keys, 10000.0)
    config = Cohere2Config(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=keys.integer("attention.sliding_window", maximum=1 << 31),
        logit_scale=keys.positive_float("logit_scale"),
    )
    check_decoder(config, keys.where)
    return config


def config_from_hf(f: HFFields) -> Cohere2Config:
    """transformers Cohere2Config (its defaults where config.json leaves a field out)."""
    refuse_biases(f)
    if f.get("use_qk_norm", False):
        f.refuse("use_qk_norm", True, "Cohere q/k norms are not supported")
    defaults = {"vocab_size": 256000, "max_position_embeddings": 8192, "tie_word_embeddings": True}
    common = hf_common(f, Cohere2Config, defaults)
    heads = common["num_attention_heads"]
    common["head_dim"] = common["hidden_size"] // heads  # Cohere2Config derives it
    theta, scaling = rope_from_hf(f, 10000.0)
    n = common["num_hidden_layers"]
    types = f.str_list("layer_types", n, (SLIDING, FULL))
    if types is None:
        pattern = f.integer("sliding_window_pattern", PATTERN)
        types = tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n))
    config = Cohere2Config(
        **common,
        layer_norm_eps=f.number("layer_norm_eps", 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=f.integer("sliding_window", 4096, maximum=1 << 31),
        layer_types=types,
        logit_scale=f.positive_float("logit_scale", 0.0625),
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: Cohere2Config) -> tuple[dict[str, Any], np.ndarray | None]:
    """Cohere2Model.set_gguf_parameters."""
    c = config
    from warmload.errors import UnsupportedError

    fixed = tuple(SLIDING if (i + 1) % PATTERN else FULL for i in range(c.num_hidden_layers))
    if c.layer_types != fixed:
        raise UnsupportedError(
            f"a Cohere2 GGUF file fixes every {PATTERN}th layer global; this config has "
            f"layer_types {c.layer_types}"
        )
    meta: dict[str, Any] = {
        f"{ARCH}.context_length": c.max_position_embeddings,
        f"{ARCH}.embedding_length": c.hidden_size,
        f"{ARCH}.block_count": c.num_hidden_layers,
        f"{ARCH}.feed_forward_length": c.intermediate_size,
        f"{ARCH}.attention.head_count": c.num_attention_heads,
        f"{ARCH}.attention.head_count_kv": c.num_key_value_heads,
        f"{ARCH}.attention.layer_norm_epsilon": float(c.layer_norm_eps),
        f"{ARCH}.attention.sliding_window": c.sliding_window,
        f"{ARCH}.logit_scale": float(c.logit_scale),
        f"{ARCH}.rope.dimension_count": c.head_dim,
    }
    rope_meta, freqs = rope_to_gguf(ARCH, c.rope_theta, c.rope_scaling, c.head_dim)
    return meta | rope_meta, freqs


def gguf_tensor(name: str, x: np.ndarray, config: Cohere2Config) -> np.ndarray:
    return x  # adjacent-pair rope on both sides: no permutation


# gguf-py constants.py MODEL_TENSORS[COHERE2] (the output is tied to the embeddings)
GGUF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
