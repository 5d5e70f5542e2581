"""Pure per-tensor steps between raw checkpoint bytes and a parameter tensor: one table.

Today every tensor is dequantized (or cast, for F32/F16/BF16) to the activation dtype with
warmload.quant.dequant; later steps (repack for quantized kernels) get their own entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from warmload.loader.plan import TensorLoad
from warmload.quant.dequant import dequantize

Transform = Callable[[Any, TensorLoad, torch.dtype], torch.Tensor]


def dequantize_tensor(raw: Any, load: TensorLoad, dtype: torch.dtype) -> torch.Tensor:
    """Raw GGML bytes -> a `dtype` tensor of the planned shape."""
    return dequantize(raw, load.ggml_type, load.shape, dtype=dtype)


TRANSFORMS: dict[str, Transform] = {
    "dequantize": dequantize_tensor,
}


def transform_tensor(raw: Any, load: TensorLoad, dtype: torch.dtype) -> torch.Tensor:
    return TRANSFORMS[load.transform](raw, load, dtype)
