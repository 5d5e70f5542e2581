"""Model configs (HF field names) from GGUF metadata or a HF config.json, per architecture.

GGUF: llama.cpp src/llama-model.cpp load_hparams (keys, defaults, gemma3's derived values) and
gguf-py constants.py Keys. SafeTensors folders: config.json fields map 1:1 onto our configs
(transformers LlamaConfig / Gemma3TextConfig, with their defaults); weights there are HF's, so
rope is "neox" and gemma norms store w (offset 1). Reads metadata and shapes only, never bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.loader.hf_config import read_hf_config
from warmload.models import ARCHITECTURES
from warmload.models.gemma3 import FULL, Gemma3Config
from warmload.models.llama import LlamaConfig

_MISSING = object()


class _Keys:
    """Typed access to `{arch}.*` metadata with errors that name the file and the key."""

    def __init__(self, checkpoint: Checkpoint, arch: str) -> None:
        self.meta, self.arch, self.path = checkpoint.metadata, arch, checkpoint.path

    def get(self, key: str, default: Any = _MISSING) -> Any:
        full = f"{self.arch}.{key}"
        value = self.meta.get(full, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise CheckpointError(f"{self.path}: metadata key {full!r} is missing")
            return default
        if isinstance(value, np.ndarray | list):
            raise UnsupportedError(
                f"{self.path}: {full!r} is an array (per-layer values are not supported)"
            )
        return value

    def get_int(self, key: str, default: Any = _MISSING) -> int:
        return int(self.get(key, default))

    def get_float(self, key: str, default: Any = _MISSING) -> float:
        return float(self.get(key, default))


def _vocab_size(checkpoint: Checkpoint, keys: _Keys) -> int:
    embd: TensorInfo | None = checkpoint.tensors.get("token_embd.weight")
    if embd is not None:
        return embd.shape[0]
    tokens = checkpoint.metadata.get("tokenizer.ggml.tokens")
    return keys.get_int("vocab_size", len(tokens) if tokens is not None else _MISSING)


def _rope_scaling(keys: _Keys) -> dict[str, Any] | None:
    """HF rope_scaling from `{arch}.rope.scaling.*` (or the legacy rope.scale_linear)."""
    kind = keys.get("rope.scaling.type", "none")
    factor = keys.get_float("rope.scaling.factor", 0.0) or keys.get_float("rope.scale_linear", 0.0)
    if kind == "linear" or (kind == "none" and factor not in (0.0, 1.0)):
        return {"rope_type": "linear", "factor": factor}
    if kind != "none":
        raise UnsupportedError(
            f"{keys.path}: rope scaling {kind!r} is not supported (supported: none, linear)"
        )
    return None


def _common(checkpoint: Checkpoint, keys: _Keys) -> dict[str, Any]:
    heads = keys.get_int("attention.head_count")
    hidden = keys.get_int("embedding_length")
    head_dim = keys.get_int("attention.key_length", hidden // heads)
    rope_dim = keys.get_int("rope.dimension_count", head_dim)
    if rope_dim != head_dim or keys.get_int("attention.value_length", head_dim) != head_dim:
        raise UnsupportedError(
            f"{keys.path}: rope over {rope_dim} of {head_dim} head dims, or value heads of "
            f"another size, is not supported"
        )
    return {
        "vocab_size": _vocab_size(checkpoint, keys),
        "hidden_size": hidden,
        "intermediate_size": keys.get_int("feed_forward_length"),
        "num_hidden_layers": keys.get_int("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": keys.get_int("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": keys.get_float("attention.layer_norm_rms_epsilon"),
        "max_position_embeddings": keys.get_int("context_length"),
        "tie_word_embeddings": "output.weight" not in checkpoint.tensors,
    }


def llama_config(checkpoint: Checkpoint, keys: _Keys) -> LlamaConfig:
    return LlamaConfig(
        **_common(checkpoint, keys),
        rope_theta=keys.get_float("rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(keys),
        rope_style="interleaved",  # GGUF q/k rows are permuted for llama.cpp's normal rope
    )


def gemma3_config(checkpoint: Checkpoint, keys: _Keys) -> Gemma3Config:
    """llama.cpp LLM_ARCH_GEMMA3: pattern 6 when a window is set, local base 10000, and the
    attention scale 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(hidden / heads)."""
    common = _common(checkpoint, keys)
    if keys.get("attn_logit_softcapping", None) is not None:
        raise UnsupportedError(f"{keys.path}: attention logit soft-capping is not supported")
    window = keys.get_int("attention.sliding_window", 0)
    n_layers = common["num_hidden_layers"]
    if n_layers == 62:
        scalar = common["hidden_size"] // common["num_attention_heads"]
    else:
        scalar = common["head_dim"]
    return Gemma3Config(
        **common,
        rope_theta=keys.get_float("rope.freq_base", 1_000_000.0),
        rope_local_base_freq=10_000.0,
        rope_scaling=_rope_scaling(keys),
        sliding_window=window or common["max_position_embeddings"],
        sliding_window_pattern=6,
        layer_types=None if window else (FULL,) * n_layers,
        query_pre_attn_scalar=float(scalar),
        final_logit_softcapping=keys.get("final_logit_softcapping", None),
        norm_weight_offset=0.0,  # llama.cpp's converter stored 1 + w
    )


CONFIG_READERS: dict[str, Callable[[Checkpoint, _Keys], Any]] = {
    "llama": llama_config,
    "gemma3": gemma3_config,
}
assert set(CONFIG_READERS) == set(ARCHITECTURES)


def read_model_config(checkpoint: Checkpoint) -> tuple[str, Any]:
    """(architecture, config) of a checkpoint; UnsupportedError lists what we run."""
    if checkpoint.format == "safetensors":
        return read_hf_config(checkpoint)
    arch = checkpoint.metadata.get("general.architecture")
    if arch not in CONFIG_READERS:
        raise UnsupportedError(
            f"{checkpoint.path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(CONFIG_READERS))})"
        )
    return arch, CONFIG_READERS[arch](checkpoint, _Keys(checkpoint, arch))
