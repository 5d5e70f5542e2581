"""Quantized linear layers: GGML weight blocks used in place, never copied to float.

QuantLinear holds a weight matrix as its raw GGML bytes, (out_features, row_nbytes) uint8, which
on a mapped GGUF file is a view of the page cache (zero copy, zero conversion at load). Its
product runs in the C kernels of warmload.kernels, by the number of rows T of x per sequence:

- decode steps (T == 1, any number of sequences): activations quantized to 8-bit blocks and
  integer products, as llama.cpp's CPU backend computes (kernels.KERNEL_TYPES says "int8"; the
  other types dequantize block by block and dot in float);
- prompt chunks of fewer than GEMM_TOKENS rows, where the kernels have the integer product of
  many tokens for every type of the call (kernels.GEMM_TYPES, VNNI machines): the same 8-bit
  activations; on AVX-512 VNNI decode steps take this very product, so a token's result does
  not depend on how it was batched or chunked;
- other chunks: below PREFILL_TOKENS rows each weight row is dequantized once in C and dotted
  in float32 with every row; above it torch's GEMM runs on weight slices dequantized into a
  bounded scratch buffer. On CPUs with AMX tiles that GEMM is bfloat16 (x and weights rounded
  to bfloat16, products summed in float32, each output rounded to bfloat16; measured by
  benchmarks/bench_generate.py), for block-quantized and BF16 weights, whose own
  rounding is coarser than bfloat16's 8 bits; F32 and F16 weights keep float32
  (`bf16_gemm_for`).

QuantEmbedding dequantizes only the rows it gathers; `as_linear()` gives the tied output layer
over the same bytes. Reference for the layouts: llama.cpp ggml/src/ggml-common.h.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from warmload import kernels
from warmload.quant.dequant import dequantize_rows, row_nbytes

PREFILL_TOKENS = 8  # prompt rows from which torch's GEMM beats dotting dequantized rows in C
GEMM_TOKENS = 64  # prompt rows from which torch's GEMM beats the integer prompt product
SCRATCH_FLOATS = 1 << 22  # 16 MiB: weight rows dequantized at a time for a GEMM

_scratch = threading.local()


def has_kernel(ggml_type: str) -> bool:
    """Whether products on `ggml_type` weights run on packed blocks here."""
    return ggml_type in kernels.KERNEL_TYPES


# Whether torch's bfloat16 GEMM runs on AMX tiles here (else it is no faster than float32).
AMX_BF16_GEMM: bool = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
FULL_PRECISION_TYPES = frozenset({"F32", "F16"})  # weights bfloat16 would round


def bf16_gemm_for(ggml_type: str) -> bool:
    """Whether prompt GEMMs on `ggml_type` weights run in bfloat16 here."""
    return AMX_BF16_GEMM and ggml_type not in FULL_PRECISION_TYPES


def gemm(x: torch.Tensor, layer: QuantLinear, cast: dict | None = None) -> torch.Tensor:
    """x (T, K) @ W.T by torch's GEMM over W's rows dequantized a slice at a time into a
    per-thread scratch buffer (bounded: a 262k-row output layer never becomes 671 MB), in
    bfloat16 where `bf16_gemm_for` says so, else float32; y float32 either way. `cast` keeps
    x's conversions for the other layers of a group (q, k, v share one)."""
    dtype = torch.bfloat16 if bf16_gemm_for(layer.ggml_type) else torch.float32
    rows_per_slice = max(1, SCRATCH_FLOATS // layer.in_features)
    need = min(rows_per_slice, layer.out_features) * layer.in_features
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < need:
        buf = _scratch.buf = torch.empty(need)
    weights = buf.view(torch.bfloat16)[:need] if dtype == torch.bfloat16 else buf
    cast = {} if cast is None else cast
    if dtype not in cast:
        cast[dtype] = x.to(dtype)
    x = cast[dtype]
    y = torch.empty((x.shape[0], layer.out_features))
    for r0 in range(0, layer.out_features, rows_per_slice):
        r1 = min(r0 + rows_per_slice, layer.out_features)
        shape = (r1 - r0, layer.in_features)
        w = kernels.dequantize(
            layer.blocks[r0:r1], layer.ggml_type, weights[: shape[0] * shape[1]].view(shape)
        )
        if dtype == torch.float32 and r1 - r0 == layer.out_features:
            torch.matmul(x, w.T, out=y)
        else:
            y[:, r0:r1] = x @ w.T
    return y


class QuantLinear(nn.Module):
    """y = x @ W.T with W (out_features, in_features) kept as GGML blocks (no bias)."""

    def __init__(self, blocks: torch.Tensor, ggml_type: str, in_features: int) -> None:
        super().__init__()
        if not has_kernel(ggml_type):
            raise ValueError(f"no packed kernel for {ggml_type}")
        out_features = blocks.shape[0]
        if blocks.dtype != torch.uint8 or blocks.dim() != 2 or not blocks.is_contiguous():
            raise ValueError("blocks must be a contiguous (out_features, row_nbytes) uint8 tensor")
        if blocks.shape[1] != row_nbytes(ggml_type, in_features):
            raise ValueError(
                f"{ggml_type} rows of {in_features} elements take "
                f"{row_nbytes(ggml_type, in_features)} bytes, not {blocks.shape[1]}"
            )
        self.register_buffer("blocks", blocks, persistent=False)
        self.ggml_type = ggml_type
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.ggml_type}"

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project_packed(x, (self,))[0]

    @staticmethod
    def project_group(x: torch.Tensor, layers: Sequence[QuantLinear]) -> list[torch.Tensor]:
        """The grouping hook of models.layers.project."""
        return project_packed(x, layers)


def project_packed(x: torch.Tensor, layers: Sequence[QuantLinear]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers] for layers of one input size, in one kernel call.

    x (..., T, K), the arithmetic chosen by T as the module docstring says. Each row's
    arithmetic depends only on that rule, never on how many other rows share the call, so
    batched and single decoding agree bit for bit."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layers[0].in_features)
    if x2.dtype != torch.float32 or not x2.is_contiguous():
        x2 = x2.float().contiguous()
    outs = _product(x2, layers, decode_step=x.dim() < 2 or x.shape[-2] == 1)
    return [y.view(*lead, y.shape[-1]) for y in outs]


def _product(x: torch.Tensor, layers: Sequence[QuantLinear], decode_step: bool) -> list:
    weights = [(m.blocks, m.ggml_type) for m in layers]
    if decode_step:
        return kernels.quantized_matmul(x, weights, "int8")
    rows = x.shape[0]
    integer = rows < GEMM_TOKENS or long_prompts_take_integer_product()
    if integer and all(m.ggml_type in kernels.GEMM_TYPES for m in layers):
        return kernels.quantized_matmul(x, weights, "gemm")
    if rows >= PREFILL_TOKENS:
        cast: dict = {}
        return [gemm(x, m, cast) for m in layers]
    return kernels.quantized_matmul(x, weights, "float")


def long_prompts_take_integer_product() -> bool:
    """Whether chunks of GEMM_TOKENS rows and more take the integer product too (no float copy
    of the weights): where torch has no AMX tiles for its bfloat16 GEMM and the kernel variant
    measured faster than torch's float32 GEMM (kernels.LONG_PROMPTS_INTEGER)."""
    return kernels.LONG_PROMPTS_INTEGER and not AMX_BF16_GEMM


def integer_prompt_tokens(packed_types: Iterable[str]) -> int:
    """Prompt chunks shorter than this run every product of a model whose packed weights have
    these types in the kernels' integer prompt product (0 when some type has none here)."""
    types = set(packed_types)
    return GEMM_TOKENS if types and types <= kernels.GEMM_TYPES else 0


class QuantEmbedding(nn.Module):
    """Token embeddings kept as GGML blocks: a lookup dequantizes only the rows it gathers."""

    def __init__(self, blocks: torch.Tensor, ggml_type: str, embedding_dim: int) -> None:
        super().__init__()
        self.register_buffer("blocks", blocks, persistent=False)
        self.ggml_type = ggml_type
        self.num_embeddings, self.embedding_dim = blocks.shape[0], embedding_dim

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}, {self.ggml_type}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        shape = (self.num_embeddings, self.embedding_dim)
        return dequantize_rows(self.blocks, self.ggml_type, shape, ids)

    def as_linear(self) -> QuantLinear:
        """The output layer tied to these embeddings, sharing their bytes."""
        return QuantLinear(self.blocks, self.ggml_type, self.embedding_dim)
