"""Gemma 2: Gemma 3's block without q/k norms, with soft-capped attention scores and logits,
alternating sliding (even layers) and global layers, one rope base.

Reference: transformers models/gemma2/modeling_gemma2.py (scores * scaling, then
cap * tanh(scores / cap), mask, softmax; final logits capped likewise; embeddings times
sqrt(hidden); RMSNorm by 1 + w; four norms per layer) and configuration_gemma2.py
(query_pre_attn_scalar, layer_types: layer i slides when i is even); llama.cpp
src/models/gemma2-iswa.cpp and llama-model.cpp LLM_ARCH_GEMMA2 (window on every other layer,
scale 1/sqrt(head_dim), 27B: 1/sqrt(hidden/heads)), convert_hf_to_gguf.py Gemma2Model (norms
stored as 1 + w). Soft-capped scores are beyond the C plan: Gemma 2 runs on the modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from warmload.models.base import DecoderLM, LayerSpec, build_decoder, rope_spec
from warmload.models.gemma3 import FULL, SLIDING
from warmload.models.gemma3 import GGUF_TENSOR_NAMES as GEMMA3_NAMES
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.llama import gguf_common, hf_common, refuse_biases
from warmload.models.rope import rope_from_gguf, rope_from_hf, rope_to_gguf

ARCH = "gemma2"


@dataclass(frozen=True, slots=True)
class Gemma2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    sliding_window: int = 4096
    layer_types: tuple[str, ...] | None = None  # None: even layers slide
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    norm_weight_offset: float = 1.0  # 0.0 for GGUF files (weights stored as 1 + w)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)


def layer_specs(c: Gemma2Config) -> tuple[LayerSpec, ...]:
    rope = rope_spec(c.rope_theta, c.rope_scaling)
    return tuple(
        LayerSpec(
            norm_eps=c.rms_norm_eps,
            norm_offset=c.norm_weight_offset,
            sandwich=True,
            activation=c.hidden_activation,
            window=c.sliding_window if kind == SLIDING else None,
            rope=rope,
            scale=c.query_pre_attn_scalar**-0.5,
            attn_softcap=c.attn_logit_softcapping,
        )
        for kind in c.layer_types  # type: ignore[union-attr]
    )


def build_model(config: Gemma2Config, device: str | torch.device = "meta") -> DecoderLM:
    return build_decoder(
        config,
        layer_specs(config),
        device,
        embed_scale=config.hidden_size**0.5,
        final_softcap=config.final_logit_softcapping,
    )


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> Gemma2Config:
    common = gguf_common(keys, tensors, tokens)
    n_layers = common["num_hidden_layers"]
    scalar = common["head_dim"]
    if n_layers == 46:  # 27B: llama.cpp scales by 1/sqrt(hidden / heads)
        scalar = common["hidden_size"] // common["num_attention_heads"]
    theta, scaling = rope_from_gguf(keys, 10000.0)
    config = Gemma2Config(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=keys.integer("attention.sliding_window", 4096, maximum=1 << 31),
        query_pre_attn_scalar=float(scalar),
        attn_logit_softcapping=keys.optional_positive("attn_logit_softcapping"),
        final_logit_softcapping=keys.optional_positive("final_logit_softcapping"),
        norm_weight_offset=0.0,  # llama.cpp's converter stored 1 + w
    )
    check_decoder(config, keys.where)
    return config


def config_from_hf(f: HFFields) -> Gemma2Config:
    """transformers Gemma2Config (its defaults where config.json leaves a field out)."""
    refuse_biases(f)
    defaults = {"vocab_size": 256000, "max_position_embeddings": 8192, "tie_word_embeddings": True}
    common = hf_common(f, Gemma2Config, defaults)
    common["head_dim"] = f.integer("head_dim", 256)
    theta, scaling = rope_from_hf(f, 10000.0)
    n = common["num_hidden_layers"]
    config = Gemma2Config(
        **common,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=f.integer("sliding_window", 4096, maximum=1 << 31),
        layer_types=f.str_list("layer_types", n, (SLIDING, FULL)),
        query_pre_attn_scalar=f.positive_float("query_pre_attn_scalar", 256.0),
        attn_logit_softcapping=_cap(f, "attn_logit_softcapping", 50.0),
        final_logit_softcapping=_cap(f, "final_logit_softcapping", 30.0),
        hidden_activation=f.activation("hidden_activation", "gelu_pytorch_tanh"),
    )
    check_decoder(config, f.where)
    return config


def _cap(f: HFFields, key: str, default: float) -> float | None:
    """A soft-cap: the class default when absent, none when null."""
    if key in f.config and f.config[key] is None:
        return None
    return f.positive_float(key, default)


def gguf_metadata(config: Gemma2Config) -> tuple[dict[str, Any], np.ndarray | None]:
    """Gemma2Model.set_gguf_parameters."""
    c = config
    from warmload.errors import UnsupportedError

    even = tuple(SLIDING if i % 2 == 0 else FULL for i in range(c.num_hidden_layers))
    scalar_ok = c.query_pre_attn_scalar == (
        c.hidden_size // c.num_attention_heads if c.num_hidden_layers == 46 else c.head_dim
    )
    if c.layer_types != even or not scalar_ok:
        raise UnsupportedError(
            f"a Gemma 2 GGUF file fixes even layers sliding and query_pre_attn_scalar = head_dim; "
            f"this config has layer_types {c.layer_types}, query_pre_attn_scalar "
            f"{c.query_pre_attn_scalar}"
        )
    meta: dict[str, Any] = {
        f"{ARCH}.context_length": c.max_position_embeddings,
        f"{ARCH}.embedding_length": c.hidden_size,
        f"{ARCH}.block_count": c.num_hidden_layers,
        f"{ARCH}.feed_forward_length": c.intermediate_size,
        f"{ARCH}.attention.head_count": c.num_attention_heads,
        f"{ARCH}.attention.head_count_kv": c.num_key_value_heads,
        f"{ARCH}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        f"{ARCH}.attention.key_length": c.head_dim,
        f"{ARCH}.attention.value_length": c.head_dim,
        f"{ARCH}.attention.sliding_window": c.sliding_window,
    }
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(c, key) is not None:
            meta[f"{ARCH}.{key}"] = float(getattr(c, key))
    rope_meta, freqs = rope_to_gguf(ARCH, c.rope_theta, c.rope_scaling, c.head_dim)
    return meta | rope_meta, freqs


def gguf_tensor(name: str, x: np.ndarray, config: Gemma2Config) -> np.ndarray:
    """Gemma2RMSNorm scales by (1 + w); GGUF stores the sum, in F32."""
    if name.endswith("norm.weight"):
        return x.astype(np.float32) + np.float32(1)
    return x


# gguf-py constants.py MODEL_TENSORS[GEMMA2]: Gemma 3's without the q/k norms
_QK_NORMS = ("blk.{i}.attn_q_norm.weight", "blk.{i}.attn_k_norm.weight")
GGUF_TENSOR_NAMES = {k: v for k, v in GEMMA3_NAMES.items() if k not in _QK_NORMS}
