"""The CausalLM protocol the engine and batch runner call, the per-layer description (LayerSpec)
the backends plan from, and the one decoder shell every architecture builds on.

An architecture (models/<arch>.py) says, per layer, what its block is made of — norm type,
biases, q/k norms, sliding window, rope on/off and base, parallel attention+MLP, sandwich norms,
activation, attention soft-cap — as a LayerSpec, plus a few model-wide values (embedding scale,
logit scale and soft-cap, final norm). DecoderLM builds HF-named modules from those specs and
runs them; fused.py builds the C decode plan from the same specs (never from `hasattr`), and
refuses, by returning no plan, any spec the C side cannot express (the modules run it then).
References: transformers modeling_llama / qwen2 / qwen3 / phi3 / mistral / gemma2 / gemma3 /
cohere2 (module names, float order), llama.cpp src/models/*.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from warmload.models.blocks import Attention, GatedMLP
from warmload.models.fused import run_plan
from warmload.models.layers import (
    KVCache,
    Linear,
    RotaryTables,
    attention_mask,
    embedding,
    key_start,
    make_norm,
    rope_inv_freq,
    tied_output,
)


@dataclass(frozen=True, slots=True)
class RopeSpec:
    """One set of rotary tables: base, HF-style scaling (as sorted items) and pair layout."""

    theta: float
    scaling: tuple[tuple[str, Any], ...] = ()
    style: str = "neox"  # "interleaved": adjacent pairs (GGUF llama, Cohere)


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """What one decoder block is made of (the C plan's layer plan is built from this)."""

    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (mean-centred LayerNorm, weight only)
    norm_eps: float = 1e-6
    norm_offset: float = 0.0  # RMSNorm scales by offset + w (1 for HF Gemma checkpoints)
    sandwich: bool = False  # post-attention and post-feedforward norms too (Gemma 2/3)
    parallel: bool = False  # attention and MLP read one normed input, both added (Cohere)
    qkv_bias: bool = False  # q, k, v projections have biases (Qwen2)
    fused_qkv: bool = False  # one qkv_proj (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3)
    qk_norm: bool = False  # per-head RMSNorm of q and k before rope (Qwen3, Gemma 3)
    activation: str = "silu"
    window: int | None = None  # sliding window (a query at p sees keys k with p - k < window)
    rope: RopeSpec | None = RopeSpec(10000.0)  # None: no rotation (Cohere2's global layers)
    scale: float = 1.0  # attention scores multiplier
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)


@runtime_checkable
class CausalLM(Protocol):
    """What the engine, the batch runner and the loader call on a model."""

    config: Any
    layer_specs: tuple[LayerSpec, ...]

    def __call__(
        self, tokens: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor
    ) -> torch.Tensor: ...  # final-normed hidden states (B, T, hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...
    def new_cache(self, max_ctx: int, batch_size: int = 1) -> KVCache: ...
    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def prepare(self, rope_freq_factors: torch.Tensor | None = None) -> None: ...
    def tied_weights(self) -> dict[str, str]: ...
    def rope_tables(self, layer: int) -> RotaryTables | None: ...


class DecoderLayer(nn.Module):
    """One block as its LayerSpec says (HF names: input_layernorm, self_attn, mlp, and
    post_attention_layernorm = the pre-MLP norm, or with `sandwich` the post-attention one
    next to pre_/post_feedforward_layernorm)."""

    def __init__(self, config: Any, spec: LayerSpec) -> None:
        super().__init__()
        c, s = config, spec
        self.spec = spec
        self.self_attn = Attention(
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            scale=s.scale,
            qk_norm_eps=s.norm_eps if s.qk_norm else None,
            norm_offset=s.norm_offset,
            window=s.window,
            bias=s.qkv_bias,
            fused_qkv=s.fused_qkv,
            softcap=s.attn_softcap,
        )
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, s.activation, s.fused_gate_up)
        self.input_layernorm = make_norm(s.norm, c.hidden_size, s.norm_eps, s.norm_offset)
        if not s.parallel:
            self.post_attention_layernorm = make_norm(
                s.norm, c.hidden_size, s.norm_eps, s.norm_offset
            )
        if s.sandwich:
            self.pre_feedforward_layernorm = make_norm(
                s.norm, c.hidden_size, s.norm_eps, s.norm_offset
            )
            self.post_feedforward_layernorm = make_norm(
                s.norm, c.hidden_size, s.norm_eps, s.norm_offset
            )

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        start_pos: int | torch.Tensor,
        rope: Any,
        mask: torch.Tensor | None,
        first_key: int,
    ) -> torch.Tensor:
        s = self.spec
        h = self.input_layernorm(x)
        attn = self.self_attn(h, cache, layer, start_pos, rope, mask, first_key)
        if s.parallel:
            return x + attn + self.mlp(h)
        if s.sandwich:
            x = x + self.post_attention_layernorm(attn)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, config: Any, specs: tuple[LayerSpec, ...], final_norm: LayerSpec) -> None:
        super().__init__()
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, s) for s in specs)
        f = final_norm
        self.norm = make_norm(f.norm, config.hidden_size, f.norm_eps, f.norm_offset)


class DecoderLM(nn.Module):
    """hidden = model(tokens, cache, start_pos); logits = model.compute_logits(hidden).

    embed_scale multiplies the embeddings (Gemma: sqrt(hidden), rounded to the activation
    dtype as HF does); logit_scale multiplies the logits (Cohere); final_softcap caps them."""

    def __init__(
        self,
        config: Any,
        specs: tuple[LayerSpec, ...],
        embed_scale: float | None = None,
        logit_scale: float | None = None,
        final_softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_specs = tuple(specs)
        self.model = DecoderModel(config, self.layer_specs, self.layer_specs[0])
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.embed_scale_value = embed_scale
        self.logit_scale, self.final_softcap = logit_scale, final_softcap
        self.embed_scale: torch.Tensor | None = None
        self.ropes: list[RotaryTables | None] = []

    def tied_weights(self) -> dict[str, str]:
        """Parameters that share another's tensor: {alias: source}."""
        if self.config.tie_word_embeddings:
            return {"lm_head.weight": "model.embed_tokens.weight"}
        return {}

    def prepare(self, rope_freq_factors: torch.Tensor | None = None) -> None:
        """After weights are attached: tie embeddings, make rope tables on the weights' device.
        GGUF rope_freqs factors apply to the layers with the model's main rope (its config's
        rope_theta), as llama.cpp applies them to every layer of a llama model."""
        if self.config.tie_word_embeddings:
            self.lm_head = tied_output(self.model.embed_tokens)
        w = self.model.norm.weight  # embeddings may stay packed
        tables: dict[RopeSpec, RotaryTables] = {}
        main = getattr(self.config, "rope_theta", None)
        for spec in self.layer_specs:
            r = spec.rope
            if r is not None and r not in tables:
                factors = rope_freq_factors if r.theta == main else None
                inv = rope_inv_freq(self.config.head_dim, r.theta, dict(r.scaling) or None, factors)
                tables[r] = RotaryTables(inv, r.style, w.dtype, w.device)
        self.ropes = [None if s.rope is None else tables[s.rope] for s in self.layer_specs]
        if self.embed_scale_value is not None:
            self.embed_scale = torch.tensor(self.embed_scale_value, dtype=w.dtype, device=w.device)

    def rope_tables(self, layer: int) -> RotaryTables | None:
        """The rotary tables layer `layer` uses (None: it does not rotate)."""
        assert self.ropes, "call prepare() after attaching the weights"
        return self.ropes[layer]

    @property
    def rope(self) -> RotaryTables | None:
        """The first layer's rotary tables (the only ones of a single-rope model)."""
        return self.ropes[0] if self.ropes else None

    def new_cache(self, max_ctx: int, batch_size: int = 1) -> KVCache:
        """An empty KV cache for max_ctx positions; rope tables grow to cover them."""
        assert self.ropes, "call prepare() after attaching the weights"
        for rope in {id(r): r for r in self.ropes if r is not None}.values():
            rope.ensure(max_ctx)
        return KVCache.for_config(self.config, max_ctx, batch_size, self.model.norm.weight)

    def forward(
        self, tokens: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor
    ) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> final-normed hidden states (B, T, hidden).
        start_pos may be a LongTensor (B,) of per-row positions when T == 1 (batched decode)."""
        assert self.ropes, "call prepare() after attaching the weights"
        B, T = tokens.shape
        cache.check(start_pos, T, B)
        x = self.embed(tokens)  # (B, T, hidden); ids may come from the CPU
        fused = run_plan(self, x, cache, start_pos)  # a step or short chunk in one C call
        if fused is not None:
            return self.model.norm(fused)
        if isinstance(start_pos, torch.Tensor):
            start_pos = start_pos.to(x.device)
        windows: dict[int | None, tuple[int, torch.Tensor | None]] = {}
        slices: dict[int, Any] = {}
        for i, layer in enumerate(self.model.layers):
            w = layer.spec.window
            if w not in windows:
                first = key_start(start_pos, w)
                windows[w] = (first, attention_mask(start_pos, T, first, w, x.device, cache.end))
            rope = self.ropes[i]
            if rope is not None and id(rope) not in slices:
                slices[id(rope)] = rope.window(start_pos, T)
            first, mask = windows[w]
            r = None if rope is None else slices[id(rope)]
            x = layer(x, cache, i, start_pos, r, mask, first)
        return self.model.norm(x)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (any shape, any device) -> their input embeddings (..., hidden)."""
        x = self.model.embed_tokens(tokens.to(self.model.norm.weight.device))
        return x * self.embed_scale if self.embed_scale is not None else x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> float32 logits (B, T, vocab), scaled and soft-capped if set."""
        logits = self.lm_head(hidden).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


def build_decoder(
    config: Any, specs: tuple[LayerSpec, ...], device: str | torch.device = "meta", **model: Any
) -> DecoderLM:
    """The decoder with parameters on `device` (meta: no memory; the loader attaches weights);
    `model` are DecoderLM's model-wide keywords (embed_scale, logit_scale, final_softcap)."""
    with torch.device(device):
        return DecoderLM(config, specs, **model).eval().requires_grad_(False)


def rope_spec(theta: float, scaling: dict[str, Any] | None, style: str = "neox") -> RopeSpec:
    """A hashable RopeSpec from a parsed rope_scaling dict."""
    return RopeSpec(float(theta), tuple(sorted((scaling or {}).items())), style)
