"""A Hugging Face model folder as a quantizer source: GGUF metadata and tensors, converted on
the fly the way llama.cpp's convert_hf_to_gguf.py writes them (no intermediate file).

Reference: llama.cpp convert_hf_to_gguf.py, LlamaModel (set_gguf_parameters, permute,
modify_tensors, generate_extra_tensors for llama3 rope factors) and gguf-py's tensor_mapping.py
for the names. config.json -> `llama.*` hyperparameters; tokenizer.json & co -> `tokenizer.*`
(hf_vocab.py); *.safetensors (one file or index shards, formats/safetensors.py) -> GGUF tensor
names, q_proj/k_proj rows permuted for llama.cpp's rope, 1-D tensors as F32, 2-D ones in their
stored dtype (F32, F16 or BF16; the quantizer converts them). Supported: LlamaForCausalLM and
MistralForCausalLM folders with a byte-level BPE tokenizer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.formats.gguf_write import BOOL, FLOAT32, INT32, STRING, UINT32, RawKV, encode_kv
from warmload.formats.safetensors import read_safetensors
from warmload.hf_vocab import tokenizer_metadata

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
# HF parameter name (regex) -> GGUF tensor name
TENSOR_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
]
_SKIPPED = re.compile(r".*rotary_emb\.inv_freq$")
_FLOATS = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # BF16 bytes as uint16
ROPE_FREQS = "rope_freqs.weight"


@dataclass(slots=True)
class HFModel:
    """What the quantizer reads from a converted folder (the same shape as a GGUF source)."""

    path: Path
    kv: list[RawKV]
    metadata: dict[str, Any]  # GGUF key -> value
    tensors: dict[str, TensorInfo]  # GGUF names; ggml_type as it is produced by tensor_bytes
    tensor_bytes: Callable[[str], Any]
    close: Callable[[], None]


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder?)")
    try:
        cfg = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    archs = cfg.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        raise UnsupportedError(
            f"{path}: architecture {archs} cannot be converted; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    return cfg


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling dict) from config.json: transformers < 5 writes rope_theta and
    rope_scaling, transformers 5 one rope_parameters dict holding both."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = cfg.get("rope_scaling") or params
    return float(theta), scaling


def _rope_metadata(cfg: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """rope scaling: linear as metadata, llama3 as the rope_freqs tensor (LlamaModel's
    generate_extra_tensors); other kinds are refused."""
    base, scaling = _rope(cfg)
    kind = str(scaling.get("rope_type", scaling.get("type", "default"))).lower()
    if kind == "default":
        return {}, None
    if kind == "linear":
        return {"llama.rope.scaling.type": "linear",
                "llama.rope.scaling.factor": float(scaling["factor"])}, None  # fmt: skip
    if kind != "llama3":
        raise UnsupportedError(f"rope_scaling {kind!r} is not converted (linear, llama3 are)")
    dim = _head_dim(cfg)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
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
    return {}, np.asarray(factors, dtype=np.float32)


def _head_dim(cfg: dict[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _model_metadata(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """LlamaModel.set_gguf_parameters (keys and value types as gguf-py writes them)."""
    try:
        n_head = int(cfg["num_attention_heads"])
        meta: dict[str, Any] = {
            "general.architecture": "llama",
            "general.name": folder.resolve().name,
            "llama.block_count": int(cfg["num_hidden_layers"]),
            "llama.context_length": int(cfg["max_position_embeddings"]),
            "llama.embedding_length": int(cfg["hidden_size"]),
            "llama.feed_forward_length": int(cfg["intermediate_size"]),
            "llama.attention.head_count": n_head,
            "llama.attention.head_count_kv": int(cfg.get("num_key_value_heads") or n_head),
            "llama.rope.freq_base": _rope(cfg)[0],
            "llama.attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
            "llama.rope.dimension_count": _head_dim(cfg),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: missing or bad field {e}") from None
    if _head_dim(cfg) != cfg["hidden_size"] // n_head:
        meta["llama.attention.key_length"] = meta["llama.attention.value_length"] = _head_dim(cfg)
    return meta


def _encode(meta: dict[str, Any]) -> list[RawKV]:
    """GGUF pairs with gguf-py's value types (ints UINT32, floats FLOAT32, token types
    INT32)."""
    out = []
    for key, value in meta.items():
        if isinstance(value, bool):
            out.append(encode_kv(key, value, BOOL))
        elif isinstance(value, int):
            out.append(encode_kv(key, value, UINT32))
        elif isinstance(value, float):
            out.append(encode_kv(key, value, FLOAT32))
        elif key == "tokenizer.ggml.token_type":
            out.append(encode_kv(key, np.asarray(value, np.int32), item_type=INT32))
        elif isinstance(value, list):
            out.append(encode_kv(key, value, item_type=STRING))
        else:
            out.append(encode_kv(key, value, STRING))
    return out


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: each head's rows (first half, second half) interleaved, for
    llama.cpp's adjacent-pair rope."""
    out_dim = rows.shape[0]
    return (
        rows.reshape(n_head, 2, out_dim // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _gguf_name(hf_name: str) -> str | None:
    for pattern, repl in TENSOR_NAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, repl, hf_name)
    return None


def _tensor_map(ckpt: Checkpoint, cfg: dict[str, Any]) -> dict[str, str]:
    """GGUF name -> HF name; unknown tensors are an error, tied lm_head is dropped."""
    names, unknown = {}, []
    for hf_name in ckpt.tensors:
        gguf = _gguf_name(hf_name)
        if gguf is None:
            if not _SKIPPED.match(hf_name):
                unknown.append(hf_name)
            continue
        if gguf == "output.weight" and cfg.get("tie_word_embeddings"):
            continue
        names[gguf] = hf_name
    if unknown:
        raise UnsupportedError(
            f"{ckpt.path}: tensors with no GGUF name: {', '.join(sorted(unknown)[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}"
        )
    return names


def _reader(ckpt: Checkpoint, cfg: dict[str, Any], names: dict[str, str], extra: dict):
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)

    def tensor_bytes(name: str) -> Any:
        """The tensor's bytes in GGUF layout, as a flat buffer (1-D uint8 or memoryview)."""
        if name in extra:
            return extra[name].view(np.uint8).reshape(-1)
        info = ckpt.tensors[names[name]]
        raw = ckpt.tensor_bytes(names[name])
        if info.ggml_type not in _FLOATS:
            raise UnsupportedError(f"tensor {info.name!r} is {info.ggml_type}; F32/F16/BF16 only")
        x = np.frombuffer(raw, _FLOATS[info.ggml_type]).reshape(info.shape)
        if len(info.shape) == 1 and info.ggml_type != "F32":
            x = _to_f32(x, info.ggml_type)
        elif name.endswith("attn_q.weight"):
            x = _permute(x, n_head)
        elif name.endswith("attn_k.weight"):
            x = _permute(x, n_kv)
        else:
            return raw
        return np.ascontiguousarray(x).view(np.uint8).reshape(-1)

    return tensor_bytes


def _to_f32(x: np.ndarray, ggml_type: str) -> np.ndarray:
    if ggml_type == "BF16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def open_hf_folder(folder: str | Path) -> HFModel:
    """Open a Hugging Face model folder for conversion: headers, config and tokenizer only."""
    path = Path(folder)
    cfg = _config(path)
    meta = _model_metadata(path, cfg)
    rope_meta, rope_freqs = _rope_metadata(cfg)
    vocab = tokenizer_metadata(path, cfg)
    meta |= rope_meta | {"llama.vocab_size": len(vocab["tokenizer.ggml.tokens"])} | vocab
    ckpt = read_safetensors(path)
    try:
        names = _tensor_map(ckpt, cfg)
        tensors = {}
        for gguf, hf_name in names.items():
            info = ckpt.tensors[hf_name]
            dtype = "F32" if len(info.shape) == 1 else info.ggml_type
            tensors[gguf] = TensorInfo(gguf, dtype, info.shape, info.offset, info.nbytes, info.file)
        extra: dict[str, np.ndarray] = {}
        if rope_freqs is not None:
            extra[ROPE_FREQS] = rope_freqs
            tensors[ROPE_FREQS] = TensorInfo(ROPE_FREQS, "F32", rope_freqs.shape, 0, 0, "")
    except BaseException:
        ckpt.close()
        raise
    reader = _reader(ckpt, cfg, names, extra)
    return HFModel(path, _encode(meta), meta, tensors, reader, ckpt.close)
