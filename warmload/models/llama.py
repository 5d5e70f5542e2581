"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral-style GQA) with Hugging Face module names.

Reference: transformers models/llama/modeling_llama.py; llama.cpp src/models/llama.cpp.
Module and config names match HF so SafeTensors checkpoints load with an identity map; GGUF
files need GGUF_TENSOR_NAMES (data, at the bottom). GGUF llama q/k rows are permuted for
llama.cpp's adjacent-pair rope, so the GGUF loader sets rope_style="interleaved" instead of
un-permuting weights; HF checkpoints use the default "neox" (rotate_half).
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
    rope_inv_freq,
    tied_output,
)


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    rope_style: str = "neox"  # "interleaved" for GGUF files (see module docstring)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        assert self.num_attention_heads % self.num_key_value_heads == 0, self


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        c = config
        self.self_attn = Attention(
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            scale=c.head_dim**-0.5,
        )
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        start_pos: int | torch.Tensor,
        rope: RopeSlice,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, layer, start_pos, rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """hidden = model(tokens, cache, start_pos); logits = model.compute_logits(hidden)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope: RotaryTables | None = None

    def tied_weights(self) -> dict[str, str]:
        """Parameters that share another's tensor: {alias: source}."""
        if self.config.tie_word_embeddings:
            return {"lm_head.weight": "model.embed_tokens.weight"}
        return {}

    def prepare(self, rope_freq_factors: torch.Tensor | None = None) -> None:
        """After weights are attached: tie embeddings, make rope tables on the weights' device."""
        if self.config.tie_word_embeddings:
            self.lm_head = tied_output(self.model.embed_tokens)
        w = self.model.norm.weight  # embeddings may stay packed
        c = self.config
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, rope_freq_factors)
        self.rope = RotaryTables(inv_freq, c.rope_style, w.dtype, w.device)

    def rope_tables(self, layer: int) -> RotaryTables:
        """The rotary tables layer `layer` uses (one set for all)."""
        assert self.rope is not None, "call prepare() after attaching the weights"
        return self.rope

    def new_cache(self, max_ctx: int, batch_size: int = 1) -> KVCache:
        """An empty KV cache for max_ctx positions; rope tables grow to cover them."""
        assert self.rope is not None, "call prepare() after attaching the weights"
        self.rope.ensure(max_ctx)
        return KVCache.for_config(self.config, max_ctx, batch_size, self.model.norm.weight)

    def forward(
        self, tokens: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor
    ) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> final-normed hidden states (B, T, hidden).
        start_pos may be a LongTensor (B,) of per-row positions when T == 1 (batched decode)."""
        assert self.rope is not None, "call prepare() after attaching the weights"
        B, T = tokens.shape
        cache.check(start_pos, T, B)
        x = self.embed(tokens)  # (B, T, hidden); ids may come from the CPU
        fused = run_plan(self, x, cache, start_pos)  # a step or short chunk in one C call
        if fused is not None:
            return self.model.norm(fused)
        if isinstance(start_pos, torch.Tensor):
            start_pos = start_pos.to(x.device)
        rope = self.rope.window(start_pos, T)
        mask = attention_mask(start_pos, T, 0, None, x.device, cache.end)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cache, i, start_pos, rope, mask)
        return self.model.norm(x)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (any shape, any device) -> their input embeddings (..., hidden)."""
        return self.model.embed_tokens(tokens.to(self.model.norm.weight.device))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> float32 logits (B, T, vocab)."""
        return self.lm_head(hidden).float()


def build_model(config: LlamaConfig, device: str | torch.device = "meta") -> LlamaForCausalLM:
    """The model with parameters on `device` (meta: no memory; the loader attaches weights)."""
    with torch.device(device):
        return LlamaForCausalLM(config).eval().requires_grad_(False)


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
