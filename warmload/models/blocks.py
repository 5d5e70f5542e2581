"""The two halves of a decoder block: attention and the gated MLP, with every option a LayerSpec
can ask for (q/k/v biases, fused qkv and gate_up projections, per-head q/k norms, a sliding
window, no rope, attention logit soft-capping).

References: transformers modeling_llama.py (LlamaAttention, LlamaMLP), modeling_qwen2.py (q/k/v
biases), modeling_qwen3.py (q_norm/k_norm before rope), modeling_phi3.py (qkv_proj and
gate_up_proj split in that order), modeling_gemma2.py (soft-capped scores), modeling_cohere2.py
(no rope on global layers). Biases stay `<proj>.bias` (HF names) even when the loader swaps a
projection for a packed QuantLinear, which has no bias of its own: BiasKeeper moves a loaded
bias onto the new module, and the block adds it after the product (_biased).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmload import kernels
from warmload.errors import UnsupportedError
from warmload.models.layers import (
    ACTIVATIONS,
    KERNEL_CHUNK_TOKENS,
    KVCache,
    Linear,
    RMSNorm,
    RopeSlice,
    apply_rope,
    project,
    rope_angles,
)


class BiasKeeper(nn.Module):
    """A module whose child projections may be replaced (packed) after their bias was loaded:
    the replacement gets the loaded bias (the loader assigns tensors in file order, and GGUF
    files put `attn_q.bias` before `attn_q.weight`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get("_modules", {}).get(name)
        super().__setattr__(name, value)
        if old is None or value is old or not isinstance(value, nn.Module):
            return
        bias = getattr(old, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.device.type != "meta":
            value.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, False)


def _biased(y: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """y plus the module's bias where its own forward did not add it (a packed QuantLinear)."""
    bias = getattr(module, "bias", None)
    if bias is None or isinstance(module, nn.Linear):
        return y
    return y + bias


class Attention(BiasKeeper):
    """Multi-head attention with GQA and rope (or none), options as a LayerSpec names them.

    A decode step (one token per row), or a prompt chunk of one sequence shorter than
    KERNEL_CHUNK_TOKENS, on the CPU runs rope, the cache write and the attention in one C call
    (warmload.kernels.attention, soft-capped scores too) where it can (rope on); `window` is
    the sliding window of a local layer (None: global)."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        scale: float,
        qk_norm_eps: float | None = None,
        norm_offset: float = 0.0,
        window: int | None = None,
        bias: bool = False,
        fused_qkv: bool = False,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale, self.window, self.softcap = scale, window, softcap
        q_out, kv_out = n_heads * head_dim, n_kv_heads * head_dim
        self.split = (q_out, kv_out, kv_out)
        if fused_qkv:
            self.qkv_proj = Linear(hidden_size, q_out + 2 * kv_out, bias=bias)
        else:
            self.q_proj = Linear(hidden_size, q_out, bias=bias)
            self.k_proj = Linear(hidden_size, kv_out, bias=bias)
            self.v_proj = Linear(hidden_size, kv_out, bias=bias)
        self.o_proj = Linear(q_out, hidden_size, bias=False)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, norm_offset)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, norm_offset)
        else:
            self.q_norm = self.k_norm = None

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k, v projections of x (..., hidden), biases added."""
        if "qkv_proj" in self._modules:
            fused = _biased(self.qkv_proj(x), self.qkv_proj)
            q, k, v = fused.split(self.split, dim=-1)
            return q, k, v
        mods = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (_biased(y, m) for y, m in zip(project(x, mods), mods))
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        start_pos: int | torch.Tensor,
        rope: RopeSlice | None,
        mask: torch.Tensor | None,
        first_key: int = 0,
    ) -> torch.Tensor:
        """start_pos: first position of every row, or per-row positions (B,) with T == 1."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, KV, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        fits = rope is not None and T < KERNEL_CHUNK_TOKENS
        if fits and kernels.AVAILABLE and q.device.type == "cpu":
            out = self._fused(q, k, v, cache, layer, start_pos, rope)
            if out is not None:
                return self.o_proj(out.view(B, T, self.n_heads * self.head_dim))
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, KV, T, D)
        keys, values = cache.update(layer, start_pos, k, v.transpose(1, 2), first_key)
        if self.softcap is None:
            out = F.scaled_dot_product_attention(
                q,
                keys,
                values,
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=self.n_heads != self.n_kv_heads,
            )  # (B, H, T, D)
        else:
            out = self._capped(q, keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _capped(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention with soft-capped scores (HF Gemma2 eager attention), (B, H, T, D)."""
        group = self.n_heads // self.n_kv_heads
        keys = keys.repeat_interleave(group, dim=1)  # (B, H, L, D)
        values = values.repeat_interleave(group, dim=1)
        scores = (q @ keys.transpose(-1, -2)) * self.scale  # (B, H, T, L)
        cap = self.softcap
        scores = torch.tanh(scores / cap) * cap  # type: ignore[operator]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(values.dtype) @ values

    def _fused(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache,
        layer: int,
        start_pos: int | torch.Tensor,
        rope: RopeSlice,
    ) -> torch.Tensor | None:
        """The (B, T, H, D) attention output of a decode step (T == 1, any rows) or of a short
        prompt chunk of one sequence, from the C kernels (rope, cache write and attention in
        one call), or None where they do not apply (float64 or bfloat16 activations, rope
        tables they cannot read, several sequences of several tokens)."""
        B, T = q.shape[:2]
        angles = rope_angles(rope)
        keys, values = cache.k[layer], cache.v[layer]
        if angles is None or keys.dtype != torch.float32 or q.dtype != torch.float32:
            return None
        if T > 1 and (B > 1 or not isinstance(start_pos, int)):
            return None
        n = B * T  # rows of a decode step, or tokens of one sequence's chunk
        q, k, v = (t.reshape(n, -1, self.head_dim).contiguous() for t in (q, k, v))
        out = kernels.attention(
            q,
            k,
            v,
            keys,
            values,
            start_pos,
            self.window,
            self.scale,
            *angles,
            chunk=T > 1,
            softcap=self.softcap,
        )
        return out.view(B, T, self.n_heads, self.head_dim)


class GatedMLP(nn.Module):
    """down_proj(act(gate) * up): SwiGLU (llama) or GeGLU-tanh (gemma); gate and up from two
    projections or from one gate_up_proj, gate first (Phi-3)."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, activation: str, fused: bool = False
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UnsupportedError(
                f"activation {activation!r} (supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        self.act = ACTIVATIONS[activation]
        self.activation = activation
        if fused:
            self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=False)
        else:
            self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
            self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "gate_up_proj" in self._modules:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = project(x, (self.gate_proj, self.up_proj))
        if kernels.AVAILABLE and gate.device.type == "cpu" and gate.dtype == torch.float32:
            # the decode plan's own function, so batched and planned steps agree bit for bit
            # (and 10-40x torch's two ops)
            return self.down_proj(kernels.act_mul(gate, up, self.activation))
        return self.down_proj(self.act(gate) * up)
