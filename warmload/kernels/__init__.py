"""CPU kernels of our own for the decode hot path (warmload/kernels/*.c), on torch tensors.

- `quantized_matmul(x, [(blocks, ggml_type), ...])`: x @ W.T for one or more W kept in their
  GGML blocks, in one call (q/k/v or gate/up share one quantized x); see quants.c and gemm.c
  for the arithmetic (8-bit activations and integer dots as llama.cpp, or block-wise float dots).
- `rms_norm(x, weight, eps, offset)`: one pass instead of torch's six ops (~10 us per call
  measured on a 576-wide row, most of a decode step's norm time).

The extension is compiled at install time (setup.py) once per ISA variant, and
warmload/kernels/dispatch.py picks the best one this CPU runs (WARMLOAD_KERNELS forces one):
`VARIANT` names it and `VARIANT_REASON` says why. Without any, `AVAILABLE` is False and callers
keep their torch paths: quant.matmul is then never used and models normalise in torch.
`use_variant(name)` rebinds this module to another runnable variant (tests and benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from warmload.formats.ggml_types import GGML_TYPES
from warmload.kernels import dispatch

if TYPE_CHECKING:  # the tensor wrappers import torch when called: the quantizer runs without it
    import torch

_TYPE_IDS = {t.name: t.id for t in GGML_TYPES.values()}

_cpu: ModuleType | None = None
AVAILABLE = False
VARIANT: str | None = None  # the variant loaded ("avx2", "avx512", ...), None without any
VARIANT_REASON = ""
KERNEL_TYPES: dict[str, str] = {}
# Types whose prompt chunks (several tokens) run as integer products (gemm.c) in this variant.
GEMM_TYPES: frozenset[str] = frozenset()
# Whether decode steps take that same product (weights unpacked for any number of tokens), so
# that a token's result does not depend on how it was batched or chunked.
DECODE_TAKES_GEMM = False
# Whether prompt chunks of 64+ tokens take that product too where there are no AMX tiles, in
# place of torch's float32 GEMM on dequantized weight slices: the variants where it measured
# faster on whole prompts (benchmarks/bench_generate.py pp512, both models; see README).
LONG_PROMPT_VARIANTS = frozenset({"avx512"})
LONG_PROMPTS_INTEGER = False
QUANTIZE_K_SIMD = False


def _bind(module: ModuleType | None, reason: str) -> None:
    """Point this module's wrappers and facts at `module` (a _cpu_<variant>, or None)."""
    global _cpu, AVAILABLE, VARIANT, VARIANT_REASON, KERNEL_TYPES, GEMM_TYPES
    global DECODE_TAKES_GEMM, QUANTIZE_K_SIMD, LONG_PROMPTS_INTEGER
    _cpu, AVAILABLE, VARIANT_REASON = module, module is not None, reason
    VARIANT = None if module is None else module.VARIANT
    if module is None:
        KERNEL_TYPES, GEMM_TYPES, DECODE_TAKES_GEMM, QUANTIZE_K_SIMD = {}, frozenset(), False, False
        LONG_PROMPTS_INTEGER = False
        return
    kinds, gemm = module.types(), module.gemm_types()
    KERNEL_TYPES = {name: kinds[i] for name, i in _TYPE_IDS.items() if i in kinds}
    GEMM_TYPES = frozenset(name for name, i in _TYPE_IDS.items() if i in gemm)
    DECODE_TAKES_GEMM = module.gemm_available() == 2  # GEMM_IN_REGISTERS: decode takes it
    QUANTIZE_K_SIMD = module.quantize_k_simd()
    LONG_PROMPTS_INTEGER = DECODE_TAKES_GEMM and VARIANT in LONG_PROMPT_VARIANTS


def _bind_chosen() -> None:
    choice = dispatch.choose()  # UnsupportedError for a bad WARMLOAD_KERNELS
    module = None
    if choice.variant is not None:
        try:
            module = dispatch.load(choice.variant)
        except ImportError as exc:  # pragma: no cover - a broken build
            choice = dispatch.Choice(None, f"{choice.variant} failed to import: {exc}")
    _bind(module, choice.reason)


_bind_chosen()


def runnable_variants() -> list[str]:
    """The built variants this CPU runs, best first (what tests and benchmarks go through)."""
    return dispatch.runnable_variants()


def variant_module(name: str) -> ModuleType:
    """The extension module of variant `name` (UnsupportedError if not built or not runnable)."""
    return dispatch.load(name)


@contextlib.contextmanager
def use_variant(name: str) -> Iterator[ModuleType]:
    """Run the block on variant `name`, then go back: every wrapper here and every fact
    (KERNEL_TYPES, GEMM_TYPES, DECODE_TAKES_GEMM ..) follows. Plans made under one variant
    are refused by another (their capsules carry the variant's name)."""
    before, reason, threads = _cpu, VARIANT_REASON, None if _cpu is None else _cpu.get_threads()
    module = variant_module(name)
    if threads is not None:
        module.set_threads(threads)
    _bind(module, f"use_variant({name!r})")
    try:
        yield module
    finally:
        _bind(before, reason)


def type_id(ggml_type: str) -> int:
    return _TYPE_IDS[ggml_type]


def plan_new(dims: tuple, layers: tuple) -> object:
    """A decode plan (see warmload/models/fused.py and kernels/decode.c); ValueError if the
    dimensions or a matrix do not fit the kernels."""
    return _cpu.plan_new(dims, layers)


def plan_step(
    plan: object, x: torch.Tensor, positions: int | torch.Tensor, chunk: bool = False
) -> None:
    """x (rows, 1, hidden) float32 contiguous through the plan's layers, in place: every row at
    one position (int), or row b at positions[b] (int64 tensor (rows,)). With chunk, x (1, T,
    hidden) is a prompt chunk of a one-row plan's sequence at positions..positions + T - 1."""
    import torch

    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 3:
        raise ValueError("plan_step needs a contiguous float32 (rows, tokens, hidden) state")
    n_tokens = x.shape[1] if chunk else x.shape[0]
    if x.shape[0 if chunk else 1] != 1:
        raise ValueError(f"plan_step: {tuple(x.shape)} is neither a step nor one chunk")
    if isinstance(positions, torch.Tensor):
        positions = positions.to(torch.int64).contiguous()
        _cpu.plan_step(plan, x.data_ptr(), n_tokens, 0, positions.data_ptr(), 0, chunk)
    else:
        _cpu.plan_step(plan, x.data_ptr(), n_tokens, 0, 0, positions, chunk)


def plan_ragged(plan: object, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> None:
    """x (N, hidden) float32 contiguous through the plan's layers, in place: token i in cache
    row rows[i] at positions[i] (int64 tensors (N,)), every token's keys stored before any
    attends (decode tokens and prompt chunks of any rows in one step)."""
    import torch

    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2:
        raise ValueError("plan_ragged needs a contiguous float32 (tokens, hidden) state")
    n_tokens = x.shape[0]
    if rows.shape != (n_tokens,) or positions.shape != (n_tokens,):
        raise ValueError("plan_ragged needs one row and one position per token")
    rows, positions = rows.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
    _cpu.plan_step(plan, x.data_ptr(), n_tokens, rows.data_ptr(), positions.data_ptr(), 0, True)


def set_threads(n: int) -> None:
    """Threads each quantized product is split over (like torch.set_num_threads)."""
    if _cpu is not None and _cpu.get_threads() != n:
        _cpu.set_threads(n)


_MODE_FLOAT, _MODE_INT8, _MODE_DEQUANT, _MODE_GEMM, _MODE_ROW_DOTS, _MODE_DEQUANT_BF16 = range(6)
_MODES = {"float": _MODE_FLOAT, "int8": _MODE_INT8, "gemm": _MODE_GEMM, "row_dots": _MODE_ROW_DOTS}


def dequantize(blocks: torch.Tensor, ggml_type: str, out: torch.Tensor) -> torch.Tensor:
    """blocks (N, row_nbytes) uint8 -> out (N, K) float32 or bfloat16 (rounded to nearest
    even) contiguous, rows split over the kernel threads."""
    import torch

    n_rows, k = out.shape
    if out.dtype not in (torch.float32, torch.bfloat16) or not out.is_contiguous():
        raise ValueError(f"dequantize writes contiguous float32 or bfloat16, not {out.dtype}")
    if n_rows:
        mode = _MODE_DEQUANT if out.dtype == torch.float32 else _MODE_DEQUANT_BF16
        part = (_TYPE_IDS[ggml_type], blocks.data_ptr(), n_rows, out.data_ptr(), mode)
        _cpu.matmul(k, 0, 1, (part,))
    return out


def quantized_matmul(
    x: torch.Tensor, weights: Sequence[tuple[torch.Tensor, str]], mode: str
) -> list[torch.Tensor]:
    """x (T, K) float32 contiguous times each weight: [x @ W.T (T, N_i) float32, ...] for the
    (blocks (N_i, row_nbytes) uint8, ggml type) pairs, in one call. Modes: "int8", x quantized
    to 8 bits once and each row of x dotted in integers (types with an integer dot); "gemm", the
    same 8-bit x against weight rows unpacked once for all rows of x (GEMM_TYPES; where the
    kernels unpack in registers, "int8" takes it too); "row_dots", the per-row integer dots
    whatever "int8" takes here (for tests); "float", each weight row dequantized once and
    dotted in float32 with every row of x. A type without the asked mode takes "float"."""
    n_tokens, k = x.shape
    mode = _MODES[mode]
    outs = [x.new_empty((n_tokens, blocks.shape[0])) for blocks, _ in weights]
    if n_tokens:
        parts = tuple(
            (_TYPE_IDS[ggml_type], blocks.data_ptr(), blocks.shape[0], y.data_ptr(), mode)
            for (blocks, ggml_type), y in zip(weights, outs)
        )
        _cpu.matmul(k, x.data_ptr(), n_tokens, parts)
    return outs


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    positions: torch.Tensor | int,
    window: int | None,
    scale: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    chunk: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """Rope, cache write and attention in one call; float32 contiguous q (n, H, D), k and v
    (n, KV, D); returns (n, H, D). cos and sin are float32 views (rows, ..., D/2) of the rope
    angles, any stride along the angles (complex tables are read through view_as_real).

    A decode step (chunk False): n rows, each with its cache row (n, KV, max_ctx, D), at its
    position (an int for every row, or an int64 tensor (n,)); angles one row for all, or one
    per row. A prompt chunk (chunk True): n tokens of one sequence at positions.. (an int),
    cache (1, KV, max_ctx, D), one row of angles per token; every token's k and v are stored
    before token i attends over the keys up to positions + i. Keys beyond `window` of a query
    are not seen. softcap (Gemma 2's attn_logit_softcapping) caps the scaled scores to
    softcap * tanh(s / softcap) before the softmax; None or 0: no cap."""
    n = q.shape[0]
    row = cos.stride(0) if chunk or (cos.shape[0] == n and n > 1) else 0
    pointer, pos0 = (0, positions) if isinstance(positions, int) else (positions.data_ptr(), 0)
    _, H, D = q.shape
    KV, max_ctx = cache_k.shape[1], cache_k.shape[2]
    out = q.new_empty(q.shape)
    _cpu.attention(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        cache_k.data_ptr(),
        cache_v.data_ptr(),
        n,
        H,
        KV,
        D,
        max_ctx,
        pointer,
        pos0,
        int(chunk),
        window or 0,
        scale,
        cos.data_ptr(),
        sin.data_ptr(),
        row,
        cos.stride(-1),
        int(interleaved),
        out.data_ptr(),
        float(softcap or 0.0),
    )
    return out


ACTIVATION_IDS = {"silu": 0, "gelu_pytorch_tanh": 1}  # kernels.h ACT_*


def act_mul(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) * up for float32 CPU tensors of one shape (contiguous)."""
    gate, up = gate.contiguous(), up.contiguous()
    out = gate.new_empty(gate.shape)
    _cpu.act_mul(
        gate.data_ptr(), up.data_ptr(), gate.numel(), ACTIVATION_IDS[activation], out.data_ptr()
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    """x / rms(x) * (offset + weight) over the last dimension; x and weight CPU float32."""
    x = x.contiguous()
    y = x.new_empty(x.shape)
    dim = x.shape[-1]
    _cpu.rms_norm(x.data_ptr(), weight.data_ptr(), x.numel() // dim, dim, eps, offset, y.data_ptr())
    return y


K_QUANT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")  # kquant.c


def quantize_k(x: np.ndarray, ggml_type: str, out: np.ndarray, simd: bool = True) -> None:
    """x (n_blocks, 256) float32 C-contiguous -> out (n_blocks, type_size) uint8: llama.cpp's
    reference K-quant blocks (quantize_row_*_ref), byte for byte. Releases the GIL. simd: the
    scale searches run 8 groups at a time where the build has AVX2 (QUANTIZE_K_SIMD); False
    runs them one group at a time (same bytes; for tests)."""
    if ggml_type not in K_QUANT_TYPES:
        raise ValueError(f"no K-quant kernel for {ggml_type}; have {', '.join(K_QUANT_TYPES)}")
    if x.dtype != np.float32 or out.dtype != np.uint8:
        raise ValueError(f"quantize_k takes float32 in, uint8 out, not {x.dtype}, {out.dtype}")
    if not (x.flags.c_contiguous and x.flags.aligned and out.flags.c_contiguous):
        raise ValueError("quantize_k needs C-contiguous arrays (x aligned for float32)")
    _cpu.quantize_k(_TYPE_IDS[ggml_type], x, out, simd)
