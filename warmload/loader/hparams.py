"""A checkpoint's architecture and model config, checked against its tensors before any
allocation.

The architecture comes from the registry (warmload.models.registry) by GGUF
`general.architecture` or config.json `model_type`; its module reads and range-checks the
hyperparameters (models/hparams.py accessors). Then, still from the header only, the values are
checked against the tensors present: the layer count against the blk.N / model.layers.N
tensors (a block_count of 10^6 fails here in milliseconds instead of building a million layers),
the vocabulary against the embedding rows, and the rope_freqs tensor against the head size.
Reads metadata and shapes only, never tensor bytes.
"""

from __future__ import annotations

import re
from typing import Any

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint
from warmload.loader.hf_config import read_hf_config
from warmload.models import registry
from warmload.models.hparams import GGUFKeys
from warmload.models.rope import check_freq_factors

_GGUF_LAYER = re.compile(r"blk\.(\d+)\.")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def read_model_config(checkpoint: Checkpoint) -> tuple[str, Any]:
    """(architecture, config) of a checkpoint; UnsupportedError lists what we run,
    CheckpointError names a bad key, its value and the file."""
    if checkpoint.format == "safetensors":
        arch, config = read_hf_config(checkpoint)
        check_layers(checkpoint, config.num_hidden_layers, _HF_LAYER, "num_hidden_layers")
        return arch, config
    arch = checkpoint.metadata.get("general.architecture")
    entry = registry.find(arch) if isinstance(arch, str) else None
    if entry is None or not entry.reads_gguf:
        raise UnsupportedError(
            f"{checkpoint.path}: architecture {_shown(arch)} is not supported "
            f"(supported: {', '.join(registry.gguf_names())})"
        )
    tokens = checkpoint.metadata.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list | tuple) else None
    keys = GGUFKeys(checkpoint.metadata, arch, str(checkpoint.path))
    config = registry.module(arch).config_from_gguf(keys, checkpoint.tensors, n_tokens)
    check_layers(checkpoint, config.num_hidden_layers, _GGUF_LAYER, f"{arch}.block_count")
    check_vocab(checkpoint, config, n_tokens)
    check_rope_freqs(checkpoint, config)
    return arch, config


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_layers(checkpoint: Checkpoint, n_layers: int, pattern: re.Pattern, key: str) -> None:
    """The config's layer count must be the number of layers the tensors hold."""
    found = {int(m.group(1)) for name in checkpoint.tensors if (m := pattern.match(name))}
    have = max(found) + 1 if found else 0
    if n_layers != have:
        raise CheckpointError(
            f"{checkpoint.path}: {key} = {n_layers} but the file has tensors for {have} "
            f"layer(s) (a damaged or mismatched file?)"
        )


def check_vocab(checkpoint: Checkpoint, config: Any, n_tokens: int | None) -> None:
    """Every token id needs an embedding row (and the output a logit row)."""
    rows = config.vocab_size
    for name in ("token_embd.weight", "output.weight"):
        info = checkpoint.tensors.get(name)
        if info is not None and info.shape and info.shape[0] != rows:
            raise CheckpointError(
                f"{checkpoint.path}: tensor {name!r} has {info.shape[0]} rows for a vocabulary "
                f"of {rows}"
            )
    if n_tokens is not None and n_tokens > rows:
        raise CheckpointError(
            f"{checkpoint.path}: tokenizer.ggml.tokens lists {n_tokens} tokens but the "
            f"embedding has {rows} rows (ids past {rows - 1} would have no embedding)"
        )


def check_rope_freqs(checkpoint: Checkpoint, config: Any) -> None:
    info = checkpoint.tensors.get("rope_freqs.weight")
    if info is None:
        return
    n = 1
    for d in info.shape:
        n *= d
    check_freq_factors(n, config.head_dim, str(checkpoint.path))
