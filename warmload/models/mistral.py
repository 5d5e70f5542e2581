"""Mistral (7B v0.1-v0.3, Ministral-style dense models): the llama decoder with a sliding
window on every layer.

Reference: transformers models/mistral/configuration_mistral.py and modeling_mistral.py
(sliding_window: a query at p sees keys k with p - k < window, on every layer; null: none);
llama.cpp converts MistralForCausalLM as a "llama" GGUF (convert_hf_to_gguf.py), so no GGUF
file says "mistral": warmload writes it as llama with `llama.attention.sliding_window`, which
its llama reader honours (llama.cpp ignores the key and attends globally).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmload.models import llama
from warmload.models.hparams import HFFields, check_decoder
from warmload.models.llama import GGUF_TENSOR_NAMES, LlamaConfig, build_model, gguf_tensor
from warmload.models.rope import rope_from_hf

__all__ = ["GGUF_TENSOR_NAMES", "build_model", "config_from_hf", "gguf_metadata", "gguf_tensor"]


def config_from_hf(f: HFFields) -> LlamaConfig:
    """transformers MistralConfig (its defaults where config.json leaves a field out)."""
    llama.refuse_biases(f)
    theta, scaling = rope_from_hf(f, 10000.0)
    defaults = {"vocab_size": 32000, "max_position_embeddings": 4096 * 32}
    window: Any = 4096 if "sliding_window" not in f.config else f.config["sliding_window"]
    config = LlamaConfig(
        **llama.hf_common(f, LlamaConfig, defaults),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=None if window is None else f.integer("sliding_window", 4096, 1, 1 << 31),
    )
    check_decoder(config, f.where)
    return config


def gguf_metadata(config: LlamaConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """As llama (LlamaModel.set_gguf_parameters), plus the window llama.cpp does not write."""
    return llama.gguf_metadata(config, "llama")
