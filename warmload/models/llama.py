"""Llama-family decoder (Llama 2/3, SmolLM2; Mistral and Qwen reuse it): config, readers,
tensor names, layer specs.

Reference: transformers models/llama/modeling_llama.py and configuration_llama.py; llama.cpp
src/models/llama.cpp, llama-model.cpp (LLM_ARCH_LLAMA hparams) and convert_hf_to_gguf.py
(LlamaModel: set_gguf_parameters, permute). GGUF llama q/k rows are permuted for llama.cpp's
adjacent-pair rope, so a GGUF file's config says rope_style="interleaved" instead of weights
being un-permuted; HF checkpoints use "neox" (rotate_half). A sliding window (Mistral) is read
from `llama.attention.sliding_window`, which warmload's converter writes (llama.cpp ignores it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from warmload.errors import UnsupportedError
from warmload.models.base import DecoderLM, LayerSpec, build_decoder, rope_spec
from warmload.models.hparams import GGUFKeys, HFFields, check_decoder
from warmload.models.rope import rope_from_gguf, rope_from_hf, rope_to_gguf


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6  # transformers' LlamaConfig default (GGUF files always set it)
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    rope_style: str = "neox"  # "interleaved" for GGUF files (see module docstring)
    sliding_window: int | None = None  # Mistral; None: every layer global
    layer_types: tuple[str, ...] | None = None  # per layer SLIDING/FULL; None: all alike
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    qk_norm: bool = False  # per-head q/k RMSNorm (Qwen3)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)


SLIDING, FULL = "sliding_attention", "full_attention"


def layer_specs(c: LlamaConfig) -> tuple[LayerSpec, ...]:
    """One spec for every layer; with layer_types, the window only on the sliding ones."""
    types = c.layer_types or (SLIDING,) * c.num_hidden_layers
    return tuple(
        LayerSpec(
            norm_eps=c.rms_norm_eps,
            qkv_bias=c.attention_bias,
            qk_norm=c.qk_norm,
            activation=c.hidden_act,
            window=c.sliding_window if kind == SLIDING else None,
            rope=rope_spec(c.rope_theta, c.rope_scaling, c.rope_style),
            scale=c.head_dim**-0.5,  # type: ignore[operator]
        )
        for kind in types
    )


def build_model(config: LlamaConfig, device: str | torch.device = "meta") -> DecoderLM:
    """The model with parameters on `device` (meta: no memory; the loader attaches weights)."""
    return build_decoder(config, layer_specs(config), device)


# ---------------------------------------------------------------- hyperparameters: GGUF


def gguf_common(
    keys: GGUFKeys,
    tensors: dict[str, Any],
    tokens: int | None,
    eps_key: str = "attention.layer_norm_rms_epsilon",
) -> dict[str, Any]:
    """The fields every llama-like GGUF file has (llama.cpp llama_model::load_hparams); the
    norm epsilon as "rms_norm_eps" from `eps_key`."""
    heads = keys.integer("attention.head_count")
    hidden = keys.integer("embedding_length")
    if hidden % heads and keys.get("attention.key_length", None) is None:
        keys.bad("embedding_length", hidden, f"not a multiple of head_count {heads}")
    head_dim = keys.integer("attention.key_length", hidden // heads)
    rope_dim = keys.integer("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        keys.refuse("rope.dimension_count", rope_dim, f"partial rope (head_dim {head_dim})")
    value_dim = keys.integer("attention.value_length", head_dim)
    if value_dim != head_dim:
        keys.refuse("attention.value_length", value_dim, f"value heads differ from {head_dim}")
    embd = tensors.get("token_embd.weight")
    vocab = embd.shape[0] if embd is not None else keys.integer("vocab_size", tokens)
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": keys.integer("feed_forward_length"),
        "num_hidden_layers": keys.integer("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": keys.integer("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": keys.number(eps_key),
        "max_position_embeddings": keys.integer("context_length", maximum=1 << 31),
        "tie_word_embeddings": "output.weight" not in tensors,
    }


def config_from_gguf(keys: GGUFKeys, tensors: dict[str, Any], tokens: int | None) -> LlamaConfig:
    theta, scaling = rope_from_gguf(keys, 10000.0)
    config = LlamaConfig(
        **gguf_common(keys, tensors, tokens),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_style="interleaved",  # GGUF q/k rows are permuted for llama.cpp's normal rope
        sliding_window=keys.optional_int("attention.sliding_window"),
    )
    check_decoder(config, keys.where)
    return config


# ------------------------------------------------------------- hyperparameters: config.json


def hf_common(f: HFFields, cls: type, defaults: dict[str, Any]) -> dict[str, Any]:
    """Fields of `cls` every llama-like config.json has, type- and range-checked."""
    heads = f.integer("num_attention_heads")
    hidden = f.integer("hidden_size")
    out = {
        "vocab_size": f.integer("vocab_size", defaults.get("vocab_size", 32000)),
        "hidden_size": hidden,
        "intermediate_size": f.integer("intermediate_size"),
        "num_hidden_layers": f.integer("num_hidden_layers", maximum=1 << 16),
        "num_attention_heads": heads,
        "num_key_value_heads": f.integer("num_key_value_heads", heads),
        "rms_norm_eps": f.number("rms_norm_eps", defaults.get("rms_norm_eps", 1e-6)),
        "max_position_embeddings": f.integer(
            "max_position_embeddings", defaults.get("max_position_embeddings", 2048), 1, 1 << 31
        ),
        "tie_word_embeddings": f.boolean(
            "tie_word_embeddings", defaults.get("tie_word_embeddings", False)
        ),
        "hidden_act": f.activation("hidden_act", defaults.get("hidden_act", "silu")),
    }
    head_dim = f.get("head_dim", None)
    if head_dim is None and hidden % heads:
        f.bad("hidden_size", hidden, f"not a multiple of num_attention_heads {heads}")
    out["head_dim"] = f.integer("head_dim") if head_dim is not None else hidden // heads
    names = {x.name for x in fields(cls)}
    return {k: v for k, v in out.items() if k in names}


def refuse_biases(f: HFFields, attention_bias_ok: bool = False) -> None:
    """attention_bias / mlp_bias the model would otherwise drop in silence."""
    if not attention_bias_ok and f.boolean("attention_bias", False):
        f.refuse("attention_bias", True, "this architecture's attention has no biases")
    if f.boolean("mlp_bias", False):
        f.refuse("mlp_bias", True, "MLP biases are not supported")


def config_from_hf(f: HFFields) -> LlamaConfig:
    refuse_biases(f)
    theta, scaling = rope_from_hf(f, 10000.0)
    config = LlamaConfig(
        **hf_common(f, LlamaConfig, {"vocab_size": 32000, "max_position_embeddings": 2048}),
        rope_theta=theta,
        rope_scaling=scaling,
    )
    check_decoder(config, f.where)
    return config


# ------------------------------------------------------------------ GGUF writing (converter)


def gguf_metadata(config: Any, arch: str = "llama") -> tuple[dict[str, Any], np.ndarray | None]:
    """`{arch}.*` keys (LlamaModel.set_gguf_parameters) and the optional rope_freqs tensor."""
    c = config
    meta: dict[str, Any] = {
        f"{arch}.block_count": c.num_hidden_layers,
        f"{arch}.context_length": c.max_position_embeddings,
        f"{arch}.embedding_length": c.hidden_size,
        f"{arch}.feed_forward_length": c.intermediate_size,
        f"{arch}.attention.head_count": c.num_attention_heads,
        f"{arch}.attention.head_count_kv": c.num_key_value_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        f"{arch}.rope.dimension_count": c.head_dim,
        f"{arch}.vocab_size": c.vocab_size,
    }
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        meta[f"{arch}.attention.key_length"] = meta[f"{arch}.attention.value_length"] = c.head_dim
    if c.sliding_window is not None:
        if c.layer_types is not None and set(c.layer_types) != {SLIDING}:
            raise UnsupportedError(
                f"a {arch} GGUF file cannot say which layers slide (layer_types "
                f"{c.layer_types}); only a window on every layer converts"
            )
        meta[f"{arch}.attention.sliding_window"] = c.sliding_window
    rope_meta, freqs = rope_to_gguf(arch, c.rope_theta, c.rope_scaling, c.head_dim)
    return meta | rope_meta, freqs


def permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: each head's rows (first half, second half) interleaved, for
    llama.cpp's adjacent-pair rope."""
    out_dim = rows.shape[0]
    return (
        rows.reshape(n_head, 2, out_dim // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def gguf_tensor(name: str, x: np.ndarray, config: LlamaConfig) -> np.ndarray:
    """An HF tensor (float) as the GGUF file stores it: q/k rows permuted."""
    if name.endswith("attn_q.weight"):
        return permute(x, config.num_attention_heads)
    if name.endswith("attn_k.weight"):
        return permute(x, config.num_key_value_heads)
    return x


# GGUF tensor name -> HF parameter name ("{i}" is the layer index). Reference: gguf-py
# constants.py MODEL_TENSORS[LLAMA] and tensor_mapping.py. rope_freqs.weight (llama 3.1+) is
# not a parameter: the loader passes it to prepare() as rope_freq_factors.
GGUF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
