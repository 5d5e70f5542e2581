"""Quantized linear layers: GGML weight blocks used in place, never copied to float.

QuantLinear holds a weight matrix as its raw GGML bytes, (out_features, row_nbytes) uint8, which
on a mapped GGUF file is a view of the page cache (zero copy, zero conversion at load). Its
product runs in the C kernels of _qmatmul.c: activations quantized to 8-bit blocks and integer
dot products per weight block for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (as
llama.cpp's CPU backend computes), block-wise dequantization and float dots for Q2_K, Q3_K,
IQ4_NL, IQ4_XS, F16 and BF16. Prompt-sized batches (PREFILL_TOKENS or more rows) instead
dequantize the weight into a float32 scratch matrix and use torch's GEMM, which is faster once
the dequantization is shared by many tokens and keeps prompt logits float32-exact.

QuantEmbedding dequantizes only the rows it gathers; `as_linear()` gives the tied output layer
over the same bytes. Reference for the layouts: llama.cpp ggml/src/ggml-common.h.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from warmload.formats.ggml_types import GGML_TYPES
from warmload.quant.dequant import dequantize, dequantize_rows, row_nbytes

try:  # built by setup.py; absent when no C compiler was available at install time
    from warmload.quant import _qmatmul
except ImportError:  # pragma: no cover - exercised only on machines without the extension
    _qmatmul = None

PREFILL_TOKENS = 32  # rows of x from which a dequantized GEMM beats the integer kernel

_KERNEL_TYPES: dict[str, str] = (
    {}
    if _qmatmul is None
    else {
        t.name: kind
        for type_id, kind in _qmatmul.types().items()
        for t in GGML_TYPES.values()
        if t.id == type_id
    }
)
_scratch = threading.local()


def has_kernel(ggml_type: str) -> bool:
    """Whether products on `ggml_type` weights run on packed blocks here."""
    return ggml_type in _KERNEL_TYPES


def kernel_types() -> dict[str, str]:
    """{type name: "int8" | "float"}: the kernel path of every packed type (empty without C)."""
    return dict(_KERNEL_TYPES)


def set_threads(n: int) -> None:
    """Threads the kernels split each product over (like torch.set_num_threads)."""
    if _qmatmul is not None and _qmatmul.get_threads() != n:
        _qmatmul.set_threads(n)


def _dequantized(blocks: torch.Tensor, ggml_type: str, shape: tuple[int, int]) -> torch.Tensor:
    """The weight as float32 in a per-thread scratch buffer reused across products."""
    need = shape[0] * shape[1]
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < need:
        buf = _scratch.buf = torch.empty(need)
    return dequantize(blocks, ggml_type, shape, out=buf[:need].view(shape))


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
        self.type_id = GGML_TYPES[ggml_type].id
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.ggml_type}"

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        n_tokens = x2.shape[0]
        if n_tokens >= PREFILL_TOKENS:
            shape = (self.out_features, self.in_features)
            return (x2 @ _dequantized(self.blocks, self.ggml_type, shape).T).view(*lead, -1)
        y = torch.empty((n_tokens, self.out_features), dtype=torch.float32)
        if n_tokens:
            _qmatmul.matmul(
                self.type_id,
                self.blocks.data_ptr(),
                self.out_features,
                self.in_features,
                x2.data_ptr(),
                n_tokens,
                y.data_ptr(),
            )
        return y.view(*lead, self.out_features)


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
