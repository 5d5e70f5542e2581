"""Gemma 3 text decoder with Hugging Face module names.

Reference: transformers models/gemma3/modeling_gemma3.py (Gemma3ForCausalLM); llama.cpp
src/models/gemma3.cpp and llama-model.cpp (LLM_ARCH_GEMMA3 hparams).

Differences from llama (models/llama.py):
- embeddings are multiplied by sqrt(hidden_size), rounded to the activation dtype (as HF);
- RMSNorm scales by (offset + weight): HF checkpoints store w and use 1 + w; llama.cpp's
  converter stores w + 1 in GGUF, so the GGUF loader sets norm_weight_offset=0.0;
- four norms per layer: input_layernorm -> attn -> post_attention_layernorm -> residual,
  pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm -> residual;
- per-head q_norm / k_norm before rope; scores scaled by query_pre_attn_scalar**-0.5;
- GeGLU with tanh-approximated GELU instead of SwiGLU;
- layers alternate sliding-window ("local", rope base rope_local_base_freq, no scaling) and
  global attention (rope base rope_theta with rope_scaling): every sliding_window_pattern-th
  layer is global; a local query at p sees keys k with p - k < sliding_window;
- rope is always "neox" (no GGUF permutation); optional final logit soft-capping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from warmload.models.base import DecoderLM, LayerSpec, build_decoder, rope_spec
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import gguf_common, hf_common, refuse_biases
from warmload.models.rope import rope_from_gguf, rope_from_hf, rope_to_gguf

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True, slots=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: dict[str, Any] | None = None  # global layers only
    max_position_embeddings: int = 32768
    sliding_window: int = 4096
    sliding_window_pattern: int = 6
    layer_types: tuple[str, ...] | None = None  # None: from sliding_window_pattern
    query_pre_attn_scalar: float = 256.0
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    norm_weight_offset: float = 1.0  # 0.0 for GGUF files (weights stored as 1 + w)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            n = self.sliding_window_pattern
            types = tuple(
                FULL if (i + 1) % n == 0 else SLIDING for i in range(self.num_hidden_layers)
            )
            object.__setattr__(self, "layer_types", types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"{len(self.layer_types)} layer_types for {self.num_hidden_layers}")


def layer_specs(c: Gemma3Config) -> tuple[LayerSpec, ...]:
    """Sliding layers: window and the local rope base; global ones: rope_theta + scaling."""
    local = rope_spec(c.rope_local_base_freq, None)
    full = rope_spec(c.rope_theta, c.rope_scaling)
    specs = []
    for kind in c.layer_types:  # type: ignore[union-attr]
        specs.append(
            LayerSpec(
                norm_eps=c.rms_norm_eps,
                norm_offset=c.norm_weight_offset,
                sandwich=True,
                qk_norm=True,
                activation=c.hidden_activation,
                window=c.sliding_window if kind == SLIDING else None,
                rope=local if kind == SLIDING else full,
                scale=c.query_pre_attn_scalar**-0.5,
            )
        )
    return tuple(specs)


def build_model(config: Gemma3Config, device: str | torch.device = "meta") -> DecoderLM:
    """The model with parameters on `device` (meta: no memory; the loader attaches weights)."""
    return build_decoder(
        config,
        layer_specs(config),
        device,
        embed_scale=config.hidden_size**0.5,
        final_softcap=config.final_logit_softcapping,
    )


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> Gemma3Config:
    """llama.cpp LLM_ARCH_GEMMA3: pattern 6 when a window is set, local base 10000, and the
    attention scale 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(hidden / heads)."""
    common = gguf_common(keys, tensors, tokens)
    if keys.get("attn_logit_softcapping", None) is not None:
        keys.refuse("attn_logit_softcapping", keys.get("attn_logit_softcapping"), "not Gemma 3's")
    window = keys.optional_int("attention.sliding_window")
    n_layers = common["num_hidden_layers"]
    if n_layers == 62:
        scalar = common["hidden_size"] // common["num_attention_heads"]
    else:
        scalar = common["head_dim"]
    theta, scaling = rope_from_gguf(keys, 1_000_000.0)
    config = Gemma3Config(
        **common,
        rope_theta=theta,
        rope_local_base_freq=10_000.0,
        rope_scaling=scaling,
        sliding_window=window or common["max_position_embeddings"],
        sliding_window_pattern=6,
        layer_types=None if window else (FULL,) * n_layers,
        query_pre_attn_scalar=float(scalar),
        final_logit_softcapping=keys.optional_positive("final_logit_softcapping"),
        norm_weight_offset=0.0,  # llama.cpp's converter stored 1 + w
    )
    check_decoder(config, keys.where)
    return config


def config_from_hf(f: HFFields) -> Gemma3Config:
    """transformers Gemma3TextConfig (defaults where config.json leaves a field out)."""
    refuse_biases(f)
    if f.get("attn_logit_softcapping", None) is not None:
        f.refuse("attn_logit_softcapping", f.get("attn_logit_softcapping"), "not Gemma 3's")
    common = hf_common(
        f,
        Gemma3Config,
        {"vocab_size": 262208, "max_position_embeddings": 131072, "tie_word_embeddings": True},
    )
    common["head_dim"] = f.integer("head_dim", 256)
    theta, scaling = rope_from_hf(f, 1_000_000.0, FULL)
    local = f.positive_float("rope_local_base_freq", 10_000.0)
    if isinstance((f.get("rope_parameters", None) or {}).get(SLIDING), dict):
        local, _ = rope_from_hf(f, local, SLIDING)  # transformers 5: one entry per layer kind
    n = common["num_hidden_layers"]
    config = Gemma3Config(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        rope_local_base_freq=local,
        sliding_window=f.integer("sliding_window", 4096, maximum=1 << 31),
        sliding_window_pattern=f.integer("sliding_window_pattern", 6),
        layer_types=f.str_list("layer_types", n, (SLIDING, FULL)),
        query_pre_attn_scalar=f.positive_float("query_pre_attn_scalar", 256.0),
        final_logit_softcapping=f.optional_positive("final_logit_softcapping"),
        hidden_activation=f.activation("hidden_activation", "gelu_pytorch_tanh"),
        norm_weight_offset=1.0,
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: Gemma3Config) -> tuple[dict[str, Any], np.ndarray | None]:
    """Gemma3Model.set_gguf_parameters (text model)."""
    c = config
    meta = {
        "gemma3.context_length": c.max_position_embeddings,
        "gemma3.embedding_length": c.hidden_size,
        "gemma3.block_count": c.num_hidden_layers,
        "gemma3.feed_forward_length": c.intermediate_size,
        "gemma3.attention.head_count": c.num_attention_heads,
        "gemma3.attention.head_count_kv": c.num_key_value_heads,
        "gemma3.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        "gemma3.attention.key_length": c.head_dim,
        "gemma3.attention.value_length": c.head_dim,
        "gemma3.attention.sliding_window": c.sliding_window,
    }
    _check_convertible(c)
    if c.final_logit_softcapping is not None:
        meta["gemma3.final_logit_softcapping"] = float(c.final_logit_softcapping)
    rope_meta, freqs = rope_to_gguf("gemma3", c.rope_theta, c.rope_scaling, c.head_dim)
    return meta | rope_meta, freqs


def _check_convertible(c: Gemma3Config) -> None:
    """What llama.cpp's GEMMA3 hparams cannot say (it fixes them): refuse, never drop."""
    from warmload.errors import UnsupportedError

    pattern = tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(c.num_hidden_layers))
    if c.layer_types != pattern or c.rope_local_base_freq != 10_000.0:
        raise UnsupportedError(
            "Gemma 3 GGUF files fix every 6th layer global and the local rope base at 10000; "
            f"this config has layer_types {c.layer_types} and rope_local_base_freq "
            f"{c.rope_local_base_freq}"
        )
    if c.query_pre_attn_scalar != c.head_dim and c.num_hidden_layers != 62:
        raise UnsupportedError(
            f"query_pre_attn_scalar {c.query_pre_attn_scalar} != head_dim {c.head_dim} "
            f"cannot be written to a Gemma 3 GGUF"
        )


def gguf_tensor(name: str, x: np.ndarray, config: Gemma3Config) -> np.ndarray:
    """Gemma3RMSNorm scales by (1 + w); GGUF stores the sum (norm_shift), in F32."""
    if name.endswith("norm.weight"):
        return x.astype(np.float32) + np.float32(1)
    return x


# GGUF tensor name -> HF parameter name ("{i}" is the layer index). Reference: gguf-py
# constants.py MODEL_TENSORS[GEMMA3] and tensor_mapping.py.
GGUF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
