"""Model configs from a Hugging Face config.json (Checkpoint.metadata["config"]).

The architecture is the registry's entry for config["model_type"]; its module's
config_from_hf reads and checks every field it uses (types, ranges, values it cannot honour:
models/hparams.py HFFields). HF weights are unpermuted and gemma norms store w, so those
configs say rope_style="neox" and norm_weight_offset=1.0 (GGUF's readers say otherwise).
"""

from __future__ import annotations

from typing import Any

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint
from warmload.models import registry
from warmload.models.hparams import HFFields


def read_hf_config(checkpoint: Checkpoint) -> tuple[str, Any]:
    """(architecture, config) of a SafeTensors checkpoint from its folder's config.json."""
    config = checkpoint.metadata.get("config")
    where = f"{checkpoint.path}/config.json"
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{checkpoint.path}: no config.json next to the weights (a Hugging Face model "
            f"folder needs one to know the architecture)"
        )
    model_type = config.get("model_type")
    arch = registry.HF_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise UnsupportedError(
            f"{where}: model_type {model_type!r:.60} is not supported "
            f"(supported: {', '.join(sorted(registry.HF_MODEL_TYPES))})"
        )
    return arch, registry.module(arch).config_from_hf(HFFields(config, where))
