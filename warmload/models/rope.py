"""Rope parameters, parsed once: from GGUF metadata, from config.json, and back to GGUF.

References: transformers modeling_rope_utils.py (rope_type "default", "linear", "llama3" and
their fields; 4.x rope_theta + rope_scaling, 5.x rope_parameters), llama.cpp llama-model.cpp
(`{arch}.rope.freq_base`, `{arch}.rope.scaling.type/factor`, legacy `rope.scale_linear`) and
convert_hf_to_gguf.py (llama3 scaling written as the rope_freqs tensor). Every value is checked
here (finite, positive, the right type) so a bad file fails with the key and the value; the
angles themselves are made in layers.rope_inv_freq. No torch: the converter uses this too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError
from warmload.models.hparams import GGUFKeys, HFFields, check_positive_float

SUPPORTED = ("default", "linear", "llama3")
_LLAMA3_FIELDS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def rope_kind(scaling: dict[str, Any] | None) -> str:
    """ "default", "linear" or "llama3" of a parsed rope_scaling dict (None: default)."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def check_scaling(scaling: Any, where: str, key: str = "rope_scaling") -> dict[str, Any] | None:
    """A HF-style rope_scaling dict with every value it needs checked, or None for default.
    UnsupportedError names a kind we do not compute; CheckpointError a malformed one."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise CheckpointError(
            f"{where}: {key} must be an object like "
            '{"rope_type": "linear", "factor": 2.0}, '
            f"not {type(scaling).__name__} {scaling!r:.60}"
        )
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if not isinstance(kind, str):
        raise CheckpointError(f"{where}: {key}.rope_type must be a string, not {kind!r:.60}")
    if kind == "default":
        return None
    if kind not in SUPPORTED:
        raise UnsupportedError(
            f"{where}: {key} type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    needed = ("factor",) if kind == "linear" else _LLAMA3_FIELDS
    out = {"rope_type": kind}
    for field in needed:
        if field not in scaling:
            raise CheckpointError(f"{where}: {key} of type {kind!r} has no {field!r}")
        out[field] = check_positive_float(scaling[field], where, f"{key}.{field}")
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise CheckpointError(
            f"{where}: {key} high_freq_factor {out['high_freq_factor']} must exceed "
            f"low_freq_factor {out['low_freq_factor']}"
        )
    return out


def rope_from_gguf(keys: GGUFKeys, theta_default: float) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from `{arch}.rope.freq_base` and `{arch}.rope.scaling.*` (or
    the legacy `{arch}.rope.scale_linear`); llama.cpp's "none" with a factor means linear."""
    theta = keys.positive_float("rope.freq_base", theta_default)
    kind = keys.string("rope.scaling.type", "none")
    key = "rope.scaling.factor"
    factor = keys.get(key, None)
    if factor is None and keys.get("rope.scale_linear", None) is not None:
        key = "rope.scale_linear"
        factor = keys.get(key)
    if kind not in ("none", "linear"):
        raise UnsupportedError(
            f"{keys.where}: rope scaling {kind!r} is not supported ({keys.arch}.rope.scaling"
            f".type; supported: none, linear)"
        )
    if kind == "none" and isinstance(factor, int | float) and factor == 0:
        factor = None  # llama.cpp: a factor of 0 is "unset" (no scaling)
    if factor is None:
        if kind == "linear":
            raise CheckpointError(f"{keys.where}: linear rope scaling without {keys.arch}.{key}")
        return theta, None
    value = check_positive_float(factor, keys.where, f"{keys.arch}.{key}")
    return theta, (None if value == 1.0 else {"rope_type": "linear", "factor": value})


def rope_from_hf(
    f: HFFields, theta_default: float, layer_kind: str | None = None
) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from transformers 4.x (rope_theta, rope_scaling) or 5.x
    (rope_parameters, for gemma-style models one entry per layer kind)."""
    params = f.get("rope_parameters", None)
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"{f.where}: rope_parameters must be an object, not {params!r:.60}")
    if params and layer_kind is not None and isinstance(params.get(layer_kind), dict):
        params = params[layer_kind]
    if params and "rope_theta" in params:
        theta = check_positive_float(params["rope_theta"], f.where, "rope_parameters.rope_theta")
        return theta, check_scaling(params, f.where, "rope_parameters")
    theta = f.positive_float("rope_theta", theta_default)
    return theta, check_scaling(f.get("rope_scaling", None), f.where)


def check_freq_factors(n: int, head_dim: int, where: str) -> None:
    """The rope_freqs tensor holds one factor per rotated pair."""
    if n != head_dim // 2:
        raise CheckpointError(
            f"{where}: tensor 'rope_freqs.weight' has {n} factors; rope over {head_dim} head "
            f"dims needs {head_dim // 2}"
        )


def rope_to_gguf(
    arch: str, theta: float, scaling: dict[str, Any] | None, head_dim: int
) -> tuple[dict[str, Any], np.ndarray | None]:
    """GGUF metadata and the optional rope_freqs tensor of convert_hf_to_gguf.py: linear as
    `{arch}.rope.scaling.*`, llama3 as per-frequency factors (LlamaModel.generate_extra_tensors)."""
    meta: dict[str, Any] = {f"{arch}.rope.freq_base": float(theta)}
    kind = rope_kind(scaling)
    if kind == "linear":
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = float(scaling["factor"])  # type: ignore[index]
        return meta, None
    if kind != "llama3":
        return meta, None
    s = scaling or {}
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, old_ctx = s["factor"], s["original_max_position_embeddings"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return meta, np.asarray(factors, dtype=np.float32)
