"""Model configs from a Hugging Face config.json (Checkpoint.metadata["config"]).

HF field names are our config field names, so each reader copies the fields our dataclass has
and checks the few values our decoders do not implement. Defaults are transformers' own
(LlamaConfig, Gemma3TextConfig) where config.json may leave a field out. Rope parameters come
as rope_theta + rope_scaling (transformers 4.x) or as rope_parameters (5.x; for Gemma 3 one
entry per attention kind). HF weights are unpermuted and gemma norms store w, so the configs
say rope_style="neox" and norm_weight_offset=1.0 (GGUF's readers say otherwise; hparams.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint
from warmload.formats.hf_folder import HF_MODEL_TYPES
from warmload.models import ARCHITECTURES
from warmload.models.gemma3 import Gemma3Config
from warmload.models.llama import LlamaConfig

_MISSING = object()


class _Fields:
    """config.json values with errors that name the file and the field."""

    def __init__(self, checkpoint: Checkpoint, config: dict[str, Any]) -> None:
        self.config, self.where = config, f"{checkpoint.path}/config.json"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        value = self.config.get(key, _MISSING)
        if value is _MISSING or value is None:  # JSON null: transformers' "not set"
            if default is _MISSING:
                raise CheckpointError(f"{self.where}: field {key!r} is missing")
            return default
        return value

    def unsupported_if(self, bad: bool, what: str) -> None:
        if bad:
            raise UnsupportedError(f"{self.where}: {what} is not supported")


def _fields_of(cls: type, f: _Fields, defaults: dict[str, Any]) -> dict[str, Any]:
    """Every field of `cls` that config.json (or `defaults`) has."""
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in f.config and f.config[field.name] is not None:
            out[field.name] = f.config[field.name]
        elif field.name in defaults:
            out[field.name] = defaults[field.name]
    return out


def _rope(f: _Fields, params: Any, theta_default: float) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from 4.x fields or a 5.x rope_parameters entry."""
    if isinstance(params, dict) and "rope_theta" in params:
        kind = params.get("rope_type", params.get("type", "default"))
        return float(params["rope_theta"]), (None if kind == "default" else dict(params))
    scaling = f.get("rope_scaling", None)
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scaling = None if kind == "default" else scaling
    return float(f.get("rope_theta", theta_default)), scaling


def _common_checks(f: _Fields) -> None:
    f.unsupported_if(bool(f.get("attention_bias", False)), "attention_bias=true")
    f.unsupported_if(bool(f.get("mlp_bias", False)), "mlp_bias=true")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        f.get(key)


def llama_hf_config(checkpoint: Checkpoint, f: _Fields) -> LlamaConfig:
    _common_checks(f)
    act = f.get("hidden_act", "silu")
    f.unsupported_if(act != "silu", f"hidden_act {act!r}")
    theta, scaling = _rope(f, f.get("rope_parameters", None), 10000.0)
    fields = _fields_of(
        LlamaConfig,
        f,
        {
            "vocab_size": 32000,
            "num_key_value_heads": f.get("num_attention_heads"),
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
        },
    )
    fields.update(rope_theta=theta, rope_scaling=scaling, rope_style="neox")
    return LlamaConfig(**fields)


def gemma3_hf_config(checkpoint: Checkpoint, f: _Fields) -> Gemma3Config:
    _common_checks(f)
    f.unsupported_if(
        f.get("attn_logit_softcapping", None) is not None, "attention logit soft-capping"
    )
    params = f.get("rope_parameters", {})
    theta, scaling = _rope(f, params.get("full_attention", params), 1_000_000.0)
    local = params.get("sliding_attention", {}).get("rope_theta")
    layer_types = f.get("layer_types", None)
    fields = _fields_of(
        Gemma3Config,
        f,
        {
            "vocab_size": 262208,
            "num_key_value_heads": f.get("num_attention_heads"),
            "max_position_embeddings": 131072,
            "sliding_window_pattern": 6,
            "tie_word_embeddings": True,
        },
    )
    fields.update(
        rope_theta=theta,
        rope_scaling=scaling,
        rope_local_base_freq=float(local or f.get("rope_local_base_freq", 10_000.0)),
        layer_types=tuple(layer_types) if layer_types else None,
        norm_weight_offset=1.0,
    )
    return Gemma3Config(**fields)


HF_CONFIG_READERS: dict[str, Callable[[Checkpoint, _Fields], Any]] = {
    "llama": llama_hf_config,
    "gemma3": gemma3_hf_config,
}
assert set(HF_CONFIG_READERS) == set(ARCHITECTURES)


def read_hf_config(checkpoint: Checkpoint) -> tuple[str, Any]:
    """(architecture, config) of a SafeTensors checkpoint from its folder's config.json."""
    config = checkpoint.metadata.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{checkpoint.path}: no config.json next to the weights (a Hugging Face model "
            f"folder needs one to know the architecture)"
        )
    arch = HF_MODEL_TYPES.get(config.get("model_type"))  # type: ignore[arg-type]
    if arch not in HF_CONFIG_READERS:
        raise UnsupportedError(
            f"{checkpoint.path}/config.json: model_type {config.get('model_type')!r} is not "
            f"supported (supported: {', '.join(sorted(HF_MODEL_TYPES))})"
        )
    try:
        return arch, HF_CONFIG_READERS[arch](checkpoint, _Fields(checkpoint, config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{checkpoint.path}/config.json: bad field value ({e})") from None
