"""The decoder stack of a decode step in one C call (warmload.kernels plan_step), built from
the model's LayerSpecs (models/base.py): plan_refusal says which specs the C side cannot run.

A decode step through the nn.Modules costs ~300 Python-level operations (module calls, views,
small allocations): at 30 layers that was a third of SmolLM2's step. When every matrix of
every layer is packed (warmload.quant.matmul.QuantLinear, found by its `blocks` and `ggml_type`)
and the activations are float32 on the CPU, `decode_plan(model, cache)` records once the
pointers of all weights, norms, rope tables and the cache's rows, and `DecodePlan.step` runs
the layers in C on preallocated buffers (warmload/kernels/decode.c, which follows the modules
step for step; tests check both give the same logits).

A step is one token for each row of a KV cache (batched decoding: each row at its own
position). On AVX-512 VNNI a plan of a one-row cache also runs prompt chunks of up to
CHUNK_TOKENS tokens (the short prompts that set the time to first token: a chunk's Python-level
work was half of a 10-token prefill). A plan belongs to the memory of one cache (or of a row
range of one, as the server's batch runner views them): it holds references to it and to the
rope tables, so the memory its pointers name stays alive. A model keeps the plans of its last
MAX_PLANS caches; they share one set of activation buffers in C.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from warmload import kernels
from warmload.models.layers import KERNEL_CHUNK_TOKENS, KVCache, RMSNorm, RotaryTables

MAX_PLANS = 64  # per model: the engine's cache, a batch runner's rows and row ranges
CHUNK_TOKENS = KERNEL_CHUNK_TOKENS - 1  # the chunks whose attention the modules run in C too
RAGGED_TOKENS = 512  # tokens of one ragged step (the batch runner's decode rows and chunks)


class DecodePlan:
    def __init__(self, capsule: Any, cache: KVCache, keep: list[Any], chunk_tokens: int) -> None:
        self.capsule, self.cache, self._keep = capsule, cache, keep
        self.chunk_tokens = chunk_tokens

    def step(self, x: torch.Tensor, positions: int | torch.Tensor) -> torch.Tensor:
        """x (rows, 1, hidden) float32: through every layer, each row at its position (an int
        for all, or an int64 tensor (rows,)), in place."""
        kernels.plan_step(self.capsule, x, positions)
        return x

    def chunk(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """x (1, T, hidden) float32, T <= chunk_tokens: a prompt chunk at start_pos.., in place."""
        kernels.plan_step(self.capsule, x, start_pos, chunk=True)
        return x

    def ragged(self, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (N, hidden) float32, N <= chunk_tokens: token i in row rows[i] at positions[i]."""
        kernels.plan_ragged(self.capsule, x, rows, positions)
        return x


def run_plan(
    model: nn.Module, x: torch.Tensor, cache: KVCache, start_pos: int | torch.Tensor
) -> torch.Tensor | None:
    """x (B, T, hidden) through every layer in one C call when the model's plan for `cache`
    takes it (a decode step, or a short prompt chunk of one row), else None."""
    B, T = x.shape[:2]
    if T > 1 and (B != 1 or isinstance(start_pos, torch.Tensor) or T > CHUNK_TOKENS):
        return None
    plan = decode_plan(model, cache)
    if plan is None or T > max(1, plan.chunk_tokens):
        return None
    x = x.contiguous()
    return plan.step(x, start_pos) if T == 1 else plan.chunk(x, start_pos)


def forward_ragged(
    model: nn.Module,
    tokens: torch.Tensor,
    cache: KVCache,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """tokens (N,), token i in row rows[i] of `cache` at positions[i] (decode tokens and short
    prompt chunks of several rows), in one fused pass -> final-normed hidden states (N, hidden).
    Only where ragged_plan(model, cache) has a plan."""
    plan = ragged_plan(model, cache)
    if plan is None:
        raise RuntimeError("this model and cache take no ragged steps (fused.ragged_plan)")
    return model.model.norm(plan.ragged(model.embed(tokens).contiguous(), rows, positions))


def ragged_plan(model: nn.Module, cache: KVCache) -> DecodePlan | None:
    """The model's plan for `cache` when it takes ragged steps (a cache of several rows, on
    AVX-512 VNNI, every layer packed), else None."""
    plan = decode_plan(model, cache) if cache.batch_size > 1 else None
    return plan if plan is not None and plan.chunk_tokens else None


def cache_key(cache: KVCache) -> tuple[int, ...]:
    """The memory a plan names: the first layer's keys and values, rows and context."""
    return (cache.k[0].data_ptr(), cache.v[0].data_ptr(), cache.batch_size, cache.max_ctx)


def decode_plan(model: nn.Module, cache: KVCache) -> DecodePlan | None:
    """The model's plan for `cache` (made on first use), or None when a layer is not packed."""
    plans: dict[tuple[int, ...], DecodePlan | None] = model.__dict__.setdefault("_plans", {})
    key = cache_key(cache)
    if key in plans:
        return plans[key]
    plan = _build(model, cache) if kernels.AVAILABLE else None
    lazy = getattr(model, "lazy_weights", None)
    if plan is not None or lazy is None or not lazy.pending:  # else: ask again once loaded
        if len(plans) >= MAX_PLANS:
            plans.pop(next(iter(plans)))
        plans[key] = plan
    return plan


def _norm(module: nn.Module | None, eps: float, offset: float) -> int | None:
    """The weight pointer of an RMSNorm with the plan's eps/offset, 0 for none, None if unfit."""
    if module is None:
        return 0
    w = module.weight
    if not isinstance(module, RMSNorm) or w.dtype != torch.float32 or not w.is_contiguous():
        return None
    return w.data_ptr() if (module.eps, module.offset) == (eps, offset) else None


def _rope_pointers(rope: RotaryTables) -> tuple[list[Any], tuple[int, int, int, int, int]]:
    """(tensors to keep, (cos ptr, sin ptr, floats per position, floats per angle, interleaved))."""
    if rope.style == "neox":
        cos2, sin2 = rope.tables  # (L, D): (cos|cos), (-sin|sin)
        half = cos2.shape[-1] // 2
        cos, sin = cos2[:, :half], sin2[:, half:]
        return [cos2, sin2], (cos.data_ptr(), sin.data_ptr(), cos2.stride(0), 1, 0)
    (table,) = rope.tables  # complex (L, D/2)
    pairs = torch.view_as_real(table)
    return [table], (pairs.data_ptr(), pairs[..., 1].data_ptr(), pairs.stride(0), 2, 1)


def plan_refusal(model: nn.Module) -> str | None:
    """Why the C plan cannot run this model's layers (from its LayerSpecs), or None."""
    specs = model.layer_specs
    first = specs[0]
    for i, s in enumerate(specs):
        if s.norm != "rms":
            return f"layer {i}: {s.norm} norm"
        if s.parallel:
            return f"layer {i}: parallel attention and MLP"
        if s.rope is None:
            return f"layer {i}: no rope"
        if s.activation not in kernels.ACTIVATION_IDS:
            return f"layer {i}: activation {s.activation}"
        if (s.norm_eps, s.norm_offset, s.activation) != (
            first.norm_eps,
            first.norm_offset,
            first.activation,
        ):
            return f"layer {i}: norms or activation differ from layer 0's"
    return None


def _build(model: nn.Module, cache: KVCache) -> DecodePlan | None:
    if plan_refusal(model) is not None or cache.k[0].dtype != torch.float32:
        return None
    spec = model.layer_specs[0]
    eps, offset = spec.norm_eps, spec.norm_offset
    weights = _layer_weights(model, eps, offset)
    if weights is None:
        return None
    rows = []
    keep: list[Any] = [cache]
    for i, (matrices, norms, biases, window, scale, softcap) in enumerate(weights):
        keys, values = cache.k[i], cache.v[i]
        if not (keys.is_contiguous() and values.is_contiguous()):
            return None
        tables, rope = _rope_pointers(model.rope_tables(i))
        keep += tables
        caches = (keys.data_ptr(), values.data_ptr())
        rows.append((matrices, norms, biases, *caches, *rope, window, scale, softcap))
    config = model.config
    attn = model.model.layers[0].self_attn
    # chunks only where decode steps take the prompt products' arithmetic (AVX-512 VNNI):
    # elsewhere a chunk's products in the modules and in the plan would round differently
    chunk_tokens = 0
    if kernels.DECODE_TAKES_GEMM:
        chunk_tokens = CHUNK_TOKENS if cache.batch_size == 1 else RAGGED_TOKENS
    dims = (
        cache.batch_size,
        chunk_tokens,
        config.hidden_size,
        attn.n_heads,
        attn.n_kv_heads,
        attn.head_dim,
        config.intermediate_size,
        cache.max_ctx,
        eps,
        offset,
        kernels.ACTIVATION_IDS[spec.activation],
    )
    try:
        capsule = kernels.plan_new(dims, tuple(rows))
    except ValueError:
        return None
    return DecodePlan(capsule, cache, keep, chunk_tokens)


def _packed(m: nn.Module, splits: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
    """(type id, pointer, rows) of a packed matrix's row ranges `splits` (a fused qkv or
    gate_up matrix as its parts: rows of GGML blocks are independent), or None if unpacked."""
    if not hasattr(m, "blocks") or kernels.KERNEL_TYPES.get(m.ggml_type) != "int8":
        return None
    if sum(splits) != m.out_features:
        return None
    type_id, base, row_nbytes = kernels.type_id(m.ggml_type), m.blocks.data_ptr(), m.blocks.shape[1]
    parts, start = [], 0
    for n in splits:
        parts.append((type_id, base + start * row_nbytes, n))
        start += n
    return parts


def _bias_pointers(attn: nn.Module) -> tuple[int, int, int] | None:
    """q, k, v bias pointers (0: none), None for a bias the plan cannot read."""
    if "qkv_proj" in attn._modules:
        bias = getattr(attn.qkv_proj, "bias", None)
        if bias is None:
            return (0, 0, 0)
        if bias.dtype != torch.float32 or not bias.is_contiguous():
            return None
        q, k, _ = attn.split
        ptr, size = bias.data_ptr(), bias.element_size()
        return (ptr, ptr + q * size, ptr + (q + k) * size)
    out = []
    for m in (attn.q_proj, attn.k_proj, attn.v_proj):
        bias = getattr(m, "bias", None)
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
            return None
        out.append(0 if bias is None else bias.data_ptr())
    return tuple(out)  # type: ignore[return-value]


def _matrices(layer: nn.Module) -> tuple | None:
    """q, k, v, o, gate, up, down as (type id, pointer, rows), or None if one is not packed."""
    attn, mlp = layer.self_attn, layer.mlp
    if "qkv_proj" in attn._modules:
        qkv = _packed(attn.qkv_proj, attn.split)
    else:
        parts = [_packed(m, (m.out_features,)) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        qkv = None if None in parts else [p[0] for p in parts]  # type: ignore[index]
    o = _packed(attn.o_proj, (attn.o_proj.out_features,))
    if "gate_up_proj" in mlp._modules:
        half = mlp.gate_up_proj.out_features // 2
        gate_up = _packed(mlp.gate_up_proj, (half, half))
    else:
        parts = [_packed(m, (m.out_features,)) for m in (mlp.gate_proj, mlp.up_proj)]
        gate_up = None if None in parts else [p[0] for p in parts]  # type: ignore[index]
    down = _packed(mlp.down_proj, (mlp.down_proj.out_features,))
    if qkv is None or o is None or gate_up is None or down is None:
        return None
    return (*qkv, o[0], *gate_up, down[0])


def _layer_weights(model: nn.Module, eps: float, offset: float) -> list[tuple] | None:
    """Per layer (matrices, norm pointers, bias pointers, window, scale, attention soft-cap
    (0: none)), or None when a layer
    is not packed; kept on the model once every weight is in place (they do not move after
    that), so a plan for another row range costs only its cache and rope pointers. Which norms
    a layer has comes from its LayerSpec (sandwich: four)."""
    known = model.__dict__.get("_plan_weights")
    if known is not None:
        return known
    weights = []
    for layer, spec in zip(model.model.layers, model.layer_specs):
        matrices = _matrices(layer)
        biases = _bias_pointers(layer.self_attn)
        if matrices is None or biases is None:
            return None
        sandwich, attn = spec.sandwich, layer.self_attn
        norms = (
            layer.input_layernorm,
            layer.post_attention_layernorm if sandwich else None,
            layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm,
            layer.post_feedforward_layernorm if sandwich else None,
            attn.q_norm,
            attn.k_norm,
        )
        pointers = tuple(_norm(n, eps, offset) for n in norms)
        if None in pointers:
            return None
        softcap = spec.attn_softcap or 0.0
        weights.append((matrices, pointers, biases, spec.window or 0, spec.scale, softcap))
    lazy = getattr(model, "lazy_weights", None)
    if lazy is None or not lazy.pending:
        model.__dict__["_plan_weights"] = weights
    return weights
