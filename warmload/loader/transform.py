"""Pure per-tensor steps between raw checkpoint bytes and a parameter tensor: one table.

"dequantize" turns GGML blocks (or F32/F16/BF16) into an activation-dtype tensor with
warmload.quant.dequant; "pack" keeps a matrix's blocks as they are on disk, viewed as
(rows, row_nbytes) uint8 without a copy, for the quantized kernels of warmload.quant.matmul.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from warmload.loader.plan import TensorLoad
from warmload.quant.dequant import dequantize, row_nbytes
from warmload.quant.raw import as_byte_tensor

Transform = Callable[[Any, TensorLoad, torch.dtype], torch.Tensor]


def dequantize_tensor(raw: Any, load: TensorLoad, dtype: torch.dtype) -> torch.Tensor:
    """Raw GGML bytes -> a `dtype` tensor of the planned shape."""
    return dequantize(raw, load.ggml_type, load.shape, dtype=dtype)


def pack_tensor(raw: Any, load: TensorLoad, dtype: torch.dtype) -> torch.Tensor:
    """Raw GGML bytes of a matrix -> (rows, row_nbytes) uint8 over the same memory."""
    blocks = as_byte_tensor(raw)
    rows = 1
    for d in load.shape[:-1]:
        rows *= d
    return blocks.view(rows, row_nbytes(load.ggml_type, load.shape[-1]))


TRANSFORMS: dict[str, Transform] = {
    "dequantize": dequantize_tensor,
    "pack": pack_tensor,
}


def transform_tensor(raw: Any, load: TensorLoad, dtype: torch.dtype) -> torch.Tensor:
    return TRANSFORMS[load.transform](raw, load, dtype)
