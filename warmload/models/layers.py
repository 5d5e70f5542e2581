"""Decoder building blocks: norms, rotary tables, attention masks, KV cache (blocks.py has the
attention and MLP modules built from them).

References: Hugging Face transformers modeling_llama.py and modeling_gemma3.py (module names and
float order), llama.cpp ggml_rope ("normal" = adjacent pairs, "neox" = halves) and
llama-graph.cpp (sliding-window mask: a query at p attends keys k with p - k < window).
Modules are built under torch.device("meta") and get their weights attached by the loader;
rotary tables and caches are plain tensors made later on the real device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmload import kernels
from warmload.errors import ContextOverflowError, RequestError, UnsupportedError
from warmload.models.rope import rope_kind

ROPE_STYLES = ("neox", "interleaved")
# Prompt chunks shorter than this attend in the C kernels (per query: tens of keys, where
# torch's SDPA spends more in setting up than in computing); longer ones in SDPA's blocked GEMMs.
KERNEL_CHUNK_TOKENS = 64
ACTIVATIONS = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Linear(nn.Linear):
    """nn.Linear without the random initialisation on meta: models are built there and the
    loader assigns every weight (verify_loaded checks), so kaiming_uniform_ on 200 meta
    matrices only cost time (~90 ms of SmolLM2's build, measured)."""

    def reset_parameters(self) -> None:
        if self.weight.device.type != "meta":
            super().reset_parameters()


class RMSNorm(nn.Module):
    """y = x / rms(x) * (offset + weight); offset 0 for llama, 1 for HF gemma checkpoints."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.AVAILABLE and x.device.type == "cpu" and x.dtype == torch.float32:
            return kernels.rms_norm(x, self.weight, self.eps, self.offset)
        w = self.weight + self.offset if self.offset else self.weight
        return F.rms_norm(x, w.shape, w, self.eps)


class LayerNorm(nn.Module):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * weight, no bias (HF CohereLayerNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h - h.mean(-1, keepdim=True)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(dtype)


def make_norm(kind: str, dim: int, eps: float, offset: float = 0.0) -> nn.Module:
    """The block norm a LayerSpec names: "rms" (RMSNorm) or "layer" (LayerNorm)."""
    if kind == "rms":
        return RMSNorm(dim, eps, offset)
    if kind == "layer" and offset == 0.0:
        return LayerNorm(dim, eps)
    raise UnsupportedError(f"norm {kind!r} with offset {offset} (supported: rms, layer)")


def rope_inv_freq(
    head_dim: int,
    theta: float,
    rope_scaling: dict[str, Any] | None = None,
    freq_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """float64 inverse frequencies (head_dim // 2,), after HF-style scaling and GGUF freq factors.

    rope_scaling follows HF: {"rope_type": "linear" | "llama3" | "default", "factor": ...}.
    freq_factors is llama.cpp's rope_freqs tensor: each frequency is divided by its factor.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    kind = rope_kind(rope_scaling)  # parsed and checked by models/rope.py
    if kind == "linear":
        inv_freq = inv_freq / float(rope_scaling["factor"])  # type: ignore[index]
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)  # type: ignore[arg-type]
    elif kind not in ("default", None):
        raise UnsupportedError(
            f"rope scaling {kind!r} is not supported (supported: linear, llama3, none)"
        )
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(torch.float64).cpu()
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    """HF _compute_llama3_parameters: scale low frequencies, blend the middle band."""
    factor, old_ctx = float(s["factor"]), float(s["original_max_position_embeddings"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, smoothed, scaled)


class RotaryTables:
    """Rotation tables for positions 0..length-1, precomputed once per context size.

    Angles are computed in float64 and stored in the activation dtype. style "neox" rotates
    the two halves of a head (HF rotate_half, llama.cpp NEOX); "interleaved" rotates adjacent
    pairs (llama.cpp's normal rope, which GGUF llama q/k rows are permuted for). The tables are
    laid out so that apply_rope costs few ops per call: neox keeps (cos|cos) and (-sin|sin) of
    shape (length, head_dim); interleaved keeps complex cos + i sin (length, head_dim // 2)
    for float32/float64, or cos and sin (length, head_dim // 2) otherwise.
    """

    def __init__(
        self, inv_freq: torch.Tensor, style: str, dtype: torch.dtype, device: torch.device
    ) -> None:
        if style not in ROPE_STYLES:
            raise UnsupportedError(f"rope style {style!r} (supported: {', '.join(ROPE_STYLES)})")
        self.inv_freq = inv_freq
        self.style = style
        self.dtype = dtype
        self.device = device
        self.length = 0
        self.tables: tuple[torch.Tensor, ...] = ()

    def ensure(self, length: int) -> None:
        """Grow the tables to cover `length` positions (computed once, reused after)."""
        if length <= self.length:
            return
        angles = torch.outer(torch.arange(length, dtype=torch.float64), self.inv_freq)
        cos, sin = angles.cos(), angles.sin()
        if self.style == "neox":
            tables = (torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1))
        elif self.dtype in (torch.float32, torch.float64):
            tables = (torch.complex(cos, sin),)
        else:
            tables = (cos, sin)
        self.tables = tuple(
            t.to(self.device, self.dtype if not t.is_complex() else _complex(self.dtype))
            for t in tables
        )
        self.length = length

    def window(self, start_pos: int | torch.Tensor, n: int) -> RopeSlice:
        """Tables for positions start_pos..start_pos+n-1, shaped (n, 1, ...) for (B, T, H, D).

        start_pos may be a LongTensor (B,) of per-row positions (n must be 1): the tables are
        gathered per row, shaped (B, 1, 1, ...); they must already cover them (ensure()).
        """
        if isinstance(start_pos, torch.Tensor):
            return (self.style, *(t[start_pos][:, None, None] for t in self.tables))
        if start_pos + n > self.length:
            self.ensure(start_pos + n)
        return (self.style, *(t[start_pos : start_pos + n, None] for t in self.tables))


RopeSlice = tuple  # (style, *tables) from RotaryTables.window


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def apply_rope(x: torch.Tensor, rope: RopeSlice) -> torch.Tensor:
    """Rotate x (B, T, H, D) by a RotaryTables.window slice."""
    style, *tables = rope
    if style == "neox":
        cos2, sin2 = tables  # (T, 1, D): (cos|cos), (-sin|sin)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos2 + torch.cat((x2, x1), dim=-1) * sin2
    if len(tables) == 1:  # complex (T, 1, D/2): one complex multiply per pair
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (B, T, H, D/2)
        return torch.view_as_real(pairs * tables[0]).flatten(-2)
    cos, sin = tables
    pairs = x.unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def attention_mask(
    start_pos: int | torch.Tensor,
    n: int,
    key_start: int,
    window: int | None,
    device: torch.device,
    end: int | None = None,
) -> torch.Tensor | None:
    """Boolean (n, L) mask of queries start_pos.. over keys key_start..start_pos+n-1.

    True = attend: causal, and for sliding-window layers query p sees key k iff p - k < window.
    None when every key is visible (a single query whose keys were already cut to the window).
    With per-row positions (LongTensor (B,), n == 1) the mask is (B, 1, 1, L) over keys
    key_start..end-1 (end = max position + 1): each row sees only its own past.
    """
    if isinstance(start_pos, torch.Tensor):
        assert n == 1 and end is not None, "per-row positions decode one token per row"
        k_pos = torch.arange(key_start, end, device=device)[None, :]
        q_pos = start_pos.to(device)[:, None]
        mask = k_pos <= q_pos
        if window is not None:
            mask &= q_pos - k_pos < window
        return mask[:, None, None, :]
    end = start_pos + n
    if n == 1 and (window is None or end - key_start <= window):
        return None
    q_pos = torch.arange(start_pos, end, device=device)[:, None]
    k_pos = torch.arange(key_start, end, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


def key_start(start_pos: int | torch.Tensor, window: int | None) -> int:
    """First key position any query from start_pos on can see (0 without a window); with
    per-row positions, the first any row can see."""
    if window is None:
        return 0
    if isinstance(start_pos, torch.Tensor):
        start_pos = int(start_pos.min())
    return max(0, start_pos - window + 1)


class KVCache:
    """Preallocated keys and values per layer, (batch, n_kv_heads, max_ctx, head_dim) each.

    Written in place by slice assignment; attention reads views of positions 0..end-1, so
    decoding allocates nothing per token here. Unwritten slots are never read, except by a
    per-row (batched) decode, whose mask hides them; rows() views a range of rows.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_ctx: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch_size, n_kv_heads, max_ctx, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_ctx = max_ctx
        self.batch_size = batch_size
        self.end = 0  # per-row decode: max position + 1 of the current step (set by check)

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop-1 sharing this one's memory (no copy)."""
        view = object.__new__(KVCache)
        view.k = [t[start:stop] for t in self.k]
        view.v = [t[start:stop] for t in self.v]
        view.max_ctx, view.batch_size, view.end = self.max_ctx, stop - start, 0
        return view

    def clear(self, row: int, start: int, stop: int) -> None:
        """Zero positions start..stop-1 of one row: a per-row decode reads keys up to the
        batch's longest row, masked but multiplied in, so they must hold finite numbers."""
        for t in (*self.k, *self.v):
            t[row, :, start:stop] = 0

    @classmethod
    def for_config(cls, config: Any, max_ctx: int, batch_size: int, like: torch.Tensor) -> KVCache:
        """A cache shaped for a decoder config (HF field names), in `like`'s dtype and device."""
        return cls(
            config.num_hidden_layers,
            batch_size,
            config.num_key_value_heads,
            max_ctx,
            config.head_dim,
            like.dtype,
            like.device,
        )

    def check(self, start_pos: int | torch.Tensor, n: int, batch_size: int) -> None:
        """Raise if positions start_pos..start_pos+n-1 do not fit (before any layer runs).
        Per-row positions (LongTensor (B,)) also record the step's key end in self.end."""
        if isinstance(start_pos, torch.Tensor):
            if n != 1 or start_pos.shape != (batch_size,):
                raise RequestError(
                    f"per-row positions need one token per row: positions "
                    f"{tuple(start_pos.shape)} for tokens ({batch_size}, {n})"
                )
            low, high = int(start_pos.min()), int(start_pos.max())
            self.end = high + 1
            start_pos, n = low, high - low + 1
        if start_pos < 0 or start_pos + n > self.max_ctx:
            raise ContextOverflowError(
                f"positions {start_pos}..{start_pos + n - 1} do not fit the KV cache of "
                f"{self.max_ctx} tokens"
            )
        if batch_size != self.batch_size:
            raise RequestError(
                f"batch of {batch_size} sequences for a KV cache made for {self.batch_size}"
            )

    def update(
        self,
        layer: int,
        start_pos: int | torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, KV, T, D) at start_pos; return views of key_start..start_pos+T-1.
        Per-row positions (B,) store row b's single token at start_pos[b] and return views of
        key_start..self.end-1 (see check)."""
        if isinstance(start_pos, torch.Tensor):
            rows = torch.arange(k.shape[0], device=k.device)
            self.k[layer][rows, :, start_pos] = k[:, :, 0]
            self.v[layer][rows, :, start_pos] = v[:, :, 0]
            end = self.end
            return self.k[layer][:, :, key_start:end], self.v[layer][:, :, key_start:end]
        end = start_pos + k.shape[2]
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, key_start:end], self.v[layer][:, :, key_start:end]


def rope_angles(rope: RopeSlice) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """(cos, sin, interleaved) float32 views of a RopeSlice for the C attention kernels (one
    row of angles per position or row), or None for tables they do not read (other dtypes)."""
    style, *tables = rope
    if style == "neox":
        cos2, sin2 = tables  # (cos|cos), (-sin|sin)
        if cos2.dtype != torch.float32:
            return None
        half = cos2.shape[-1] // 2
        return cos2[..., :half], sin2[..., half:], False
    if len(tables) == 1 and tables[0].dtype == torch.complex64:
        pairs = torch.view_as_real(tables[0])  # (..., D/2, 2): cos, sin
        return pairs[..., 0], pairs[..., 1], True
    return None


def embedding(vocab_size: int, hidden_size: int) -> nn.Embedding:
    """An uninitialised nn.Embedding: its default normal_ init on meta imports torch._dynamo
    (over a second), and the loader replaces the weight anyway."""
    weight = torch.empty(vocab_size, hidden_size)
    return nn.Embedding(vocab_size, hidden_size, _weight=weight, _freeze=True)


def project(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers]; layers of one type that offer a `project_group` hook
    (warmload.quant.matmul.QuantLinear) compute all of them in one call on one input."""
    group = getattr(type(layers[0]), "project_group", None)
    if group is not None and all(type(m) is type(layers[0]) for m in layers):
        return group(x, layers)
    return [m(x) for m in layers]


def tied_output(embed: nn.Module) -> nn.Module:
    """The output layer sharing the token embeddings' weight: a Linear over the same tensor, or
    the packed embedding's own linear view (warmload.quant.matmul.QuantEmbedding.as_linear)."""
    if hasattr(embed, "as_linear"):
        return embed.as_linear()
    vocab_size, hidden_size = embed.weight.shape
    with torch.device("meta"):
        head = Linear(hidden_size, vocab_size, bias=False)
    head.weight = embed.weight
    return head
