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

import torch
from torch import nn

from warmload.models.fused import run_plan
from warmload.models.layers import (
    Attention,
    GatedMLP,
    KVCache,
    Linear,
    RMSNorm,
    RopeSlice,
    RotaryTables,
    attention_mask,
    embedding,
    key_start,
    rope_inv_freq,
    tied_output,
)

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
        assert len(self.layer_types) == self.num_hidden_layers, self
        assert self.num_attention_heads % self.num_key_value_heads == 0, self


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Gemma3Config, layer_type: str) -> None:
        super().__init__()
        c, off = config, config.norm_weight_offset
        self.window = c.sliding_window if layer_type == SLIDING else None
        self.self_attn = Attention(
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            scale=c.query_pre_attn_scalar**-0.5,
            qk_norm_eps=c.rms_norm_eps,
            norm_offset=off,
            window=self.window,
        )
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_activation)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, off)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, off)
        self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, off)
        self.post_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, off)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        start_pos: int | torch.Tensor,
        rope: RopeSlice,
        mask: torch.Tensor | None,
        first_key: int,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cache, layer, start_pos, rope, mask, first_key)
        x = x + self.post_attention_layernorm(h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(h)


class Gemma3TextModel(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weight_offset)


class Gemma3ForCausalLM(nn.Module):
    """hidden = model(tokens, cache, start_pos); logits = model.compute_logits(hidden)."""

    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.config = config
        self.model = Gemma3TextModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope_local: RotaryTables | None = None
        self.rope_global: RotaryTables | None = None
        self.embed_scale: torch.Tensor | None = None

    def tied_weights(self) -> dict[str, str]:
        """Parameters that share another's tensor: {alias: source}."""
        if self.config.tie_word_embeddings:
            return {"lm_head.weight": "model.embed_tokens.weight"}
        return {}

    def prepare(self, rope_freq_factors: torch.Tensor | None = None) -> None:
        """After weights are attached: tie embeddings, make rope tables on the weights' device."""
        if self.config.tie_word_embeddings:
            self.lm_head = tied_output(self.model.embed_tokens)
        c, w = self.config, self.model.norm.weight  # embeddings may stay packed
        local = rope_inv_freq(c.head_dim, c.rope_local_base_freq)
        full = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, rope_freq_factors)
        self.rope_local = RotaryTables(local, "neox", w.dtype, w.device)
        self.rope_global = RotaryTables(full, "neox", w.dtype, w.device)
        self.embed_scale = torch.tensor(c.hidden_size**0.5, dtype=w.dtype, device=w.device)

    def rope_tables(self, layer: int) -> RotaryTables:
        """Local layers rotate with the local base, global ones with rope_theta (+ scaling)."""
        assert self.rope_local is not None, "call prepare() after attaching the weights"
        return self.rope_local if self.config.layer_types[layer] == SLIDING else self.rope_global

    def new_cache(self, max_ctx: int, batch_size: int = 1) -> KVCache:
        """An empty KV cache for max_ctx positions; rope tables grow to cover them."""
        assert self.rope_local is not None, "call prepare() after attaching the weights"
        self.rope_local.ensure(max_ctx)
        self.rope_global.ensure(max_ctx)
        return KVCache.for_config(self.config, max_ctx, batch_size, self.model.norm.weight)

    def forward(
        self, tokens: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor
    ) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> final-normed hidden states (B, T, hidden).
        start_pos may be a LongTensor (B,) of per-row positions when T == 1 (batched decode)."""
        assert self.rope_local is not None, "call prepare() after attaching the weights"
        B, T = tokens.shape
        cache.check(start_pos, T, B)
        x = self.embed(tokens)  # (B, T, hidden); ids may come from the CPU
        fused = run_plan(self, x, cache, start_pos)  # a step or short chunk in one C call
        if fused is not None:
            return self.model.norm(fused)
        if isinstance(start_pos, torch.Tensor):
            start_pos = start_pos.to(x.device)
        window, end = self.config.sliding_window, cache.end
        local_start = key_start(start_pos, window)
        ropes = {
            SLIDING: self.rope_local.window(start_pos, T),
            FULL: self.rope_global.window(start_pos, T),
        }
        masks = {
            SLIDING: attention_mask(start_pos, T, local_start, window, x.device, end),
            FULL: attention_mask(start_pos, T, 0, None, x.device, end),
        }
        starts = {SLIDING: local_start, FULL: 0}
        for i, (layer, kind) in enumerate(zip(self.model.layers, self.config.layer_types)):
            x = layer(x, cache, i, start_pos, ropes[kind], masks[kind], starts[kind])
        return self.model.norm(x)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (any shape, any device) -> their input embeddings (..., hidden)."""
        return self.model.embed_tokens(tokens.to(self.embed_scale.device)) * self.embed_scale

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> float32 logits (B, T, vocab), soft-capped if configured."""
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def build_model(config: Gemma3Config, device: str | torch.device = "meta") -> Gemma3ForCausalLM:
    """The model with parameters on `device` (meta: no memory; the loader attaches weights)."""
    with torch.device(device):
        return Gemma3ForCausalLM(config).eval().requires_grad_(False)


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
