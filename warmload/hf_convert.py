"""A Hugging Face model folder as a quantizer source: GGUF metadata and tensors, converted on
the fly the way llama.cpp's convert_hf_to_gguf.py writes them (no intermediate file).

Reference: llama.cpp convert_hf_to_gguf.py, LlamaModel (set_gguf_parameters, permute,
modify_tensors, generate_extra_tensors for llama3 rope factors) and gguf-py's tensor_mapping.py
for the names. config.json -> `llama.*` hyperparameters; tokenizer.json & co -> `tokenizer.*`
(hf_vocab.py); *.safetensors (one file or index shards, formats/safetensors.py) -> GGUF tensor
names, q_proj/k_proj rows permuted for llama.cpp's rope, 1-D tensors as F32, 2-D ones in their
stored dtype (F32, F16 or BF16; the quantizer converts them). Supported: LlamaForCausalLM and
MistralForCausalLM (LlamaModel), and Gemma3ForCausalLM (Gemma3Model: norms stored as 1 + w,
embedding rows past the vocab dropped; no q/k permutation).
"""

from __future__ import annotations

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
from warmload.formats.hf_folder import inside_folder, read_json
from warmload.formats.safetensors import read_safetensors
from warmload.hf_vocab import tokenizer_metadata

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                 "Gemma3ForCausalLM": "gemma3"}  # fmt: skip
_LAYER = r"model\.layers\.(\d+)\."
# HF parameter name (regex) -> GGUF tensor name, per architecture
_COMMON_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (_LAYER + r"input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (_LAYER + r"self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (_LAYER + r"self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (_LAYER + r"self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (_LAYER + r"self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (_LAYER + r"mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (_LAYER + r"mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (_LAYER + r"mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
]
TENSOR_NAMES = {
    "llama": [
        *_COMMON_NAMES,
        (_LAYER + r"post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
    ],
    "gemma3": [
        *_COMMON_NAMES,
        (_LAYER + r"self_attn\.q_norm\.weight", r"blk.\1.attn_q_norm.weight"),
        (_LAYER + r"self_attn\.k_norm\.weight", r"blk.\1.attn_k_norm.weight"),
        (_LAYER + r"post_attention_layernorm\.weight", r"blk.\1.post_attention_norm.weight"),
        (_LAYER + r"pre_feedforward_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
        (_LAYER + r"post_feedforward_layernorm\.weight", r"blk.\1.post_ffw_norm.weight"),
    ],
}
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
    cfg = read_json(inside_folder(folder, "config.json", "config.json"))  # any shape, any depth
    listed = cfg.get("architectures") if isinstance(cfg.get("architectures"), list) else []
    archs = [a for a in listed if isinstance(a, str) and a in ARCHITECTURES]
    if not archs:
        raise UnsupportedError(
            f"{path}: architecture {cfg.get('architectures')} cannot be converted; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    cfg["_arch"] = ARCHITECTURES[archs[0]]
    return cfg


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling dict) from config.json: transformers < 5 writes rope_theta and
    rope_scaling, transformers 5 one rope_parameters dict holding both."""
    params = cfg.get("rope_parameters") or {}
    params = params.get("full_attention", params)  # gemma3: per layer type; global layers
    default = 1_000_000.0 if cfg["_arch"] == "gemma3" else 10000.0
    theta = cfg.get("rope_theta") or params.get("rope_theta") or default
    scaling = cfg.get("rope_scaling") or params
    return float(theta), scaling


def _rope_metadata(cfg: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """rope scaling: linear as metadata, llama3 as the rope_freqs tensor (LlamaModel's
    generate_extra_tensors); other kinds are refused."""
    base, scaling = _rope(cfg)
    kind = str(scaling.get("rope_type", scaling.get("type", "default"))).lower()
    arch = cfg["_arch"]
    if kind == "default":
        return {}, None
    if kind == "linear":
        return {f"{arch}.rope.scaling.type": "linear",
                f"{arch}.rope.scaling.factor": float(scaling["factor"])}, None  # fmt: skip
    if kind != "llama3" or arch != "llama":
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


def _gemma3_metadata(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Gemma3Model.set_gguf_parameters (text model)."""
    if cfg.get("attn_logit_softcapping") is not None:
        raise UnsupportedError(f"{folder}: Gemma 3 does not use attn_logit_softcapping")
    head_dim = int(cfg.get("head_dim", 256))
    return {
        "general.architecture": "gemma3",
        "general.name": folder.resolve().name,
        "gemma3.context_length": int(cfg.get("max_position_embeddings", 131072)),
        "gemma3.embedding_length": int(cfg["hidden_size"]),
        "gemma3.block_count": int(cfg["num_hidden_layers"]),
        "gemma3.feed_forward_length": int(cfg["intermediate_size"]),
        "gemma3.attention.head_count": int(cfg.get("num_attention_heads", 8)),
        "gemma3.attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
        "gemma3.attention.key_length": head_dim,
        "gemma3.attention.value_length": head_dim,
        "gemma3.rope.freq_base": _rope(cfg)[0],
        "gemma3.attention.sliding_window": int(cfg["sliding_window"]),
        "gemma3.attention.head_count_kv": int(cfg.get("num_key_value_heads", 4)),
    }


def _model_metadata(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """LlamaModel.set_gguf_parameters (keys and value types as gguf-py writes them)."""
    if cfg["_arch"] == "gemma3":
        try:
            return _gemma3_metadata(folder, cfg)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: missing or bad field {e}") from None
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
    INT32, scores FLOAT32)."""
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
        elif key == "tokenizer.ggml.scores":
            out.append(encode_kv(key, np.asarray(value, np.float32), item_type=FLOAT32))
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


def _gguf_name(hf_name: str, arch: str) -> str | None:
    for pattern, repl in TENSOR_NAMES[arch]:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, repl, hf_name)
    return None


def _tensor_map(ckpt: Checkpoint, cfg: dict[str, Any]) -> dict[str, str]:
    """GGUF name -> HF name; unknown tensors are an error, tied lm_head is dropped."""
    names, unknown = {}, []
    for hf_name in ckpt.tensors:
        gguf = _gguf_name(hf_name, cfg["_arch"])
        if gguf is None:
            if not _SKIPPED.match(hf_name):
                unknown.append(hf_name)
            continue
        if gguf == "output.weight" and cfg.get("tie_word_embeddings", cfg["_arch"] == "gemma3"):
            continue
        names[gguf] = hf_name
    if unknown:
        raise UnsupportedError(
            f"{ckpt.path}: tensors with no GGUF name: {', '.join(sorted(unknown)[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}"
        )
    return names


def _reader(
    ckpt: Checkpoint, cfg: dict[str, Any], names: dict[str, str], extra: dict, n_vocab: int
) -> Callable[[str], Any]:
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    gemma = cfg["_arch"] == "gemma3"

    def tensor_bytes(name: str) -> Any:
        """The tensor's bytes in GGUF layout, as a flat buffer (1-D uint8 or memoryview)."""
        if name in extra:
            return extra[name].view(np.uint8).reshape(-1)
        info = ckpt.tensors[names[name]]
        raw = ckpt.tensor_bytes(names[name])
        if info.ggml_type not in _FLOATS:
            raise UnsupportedError(f"tensor {info.name!r} is {info.ggml_type}; F32/F16/BF16 only")
        x = np.frombuffer(raw, _FLOATS[info.ggml_type]).reshape(info.shape)
        if name == "token_embd.weight" and x.shape[0] > n_vocab:
            x = x[:n_vocab]  # rows past the vocab (Gemma 3 pads its embedding)
        elif gemma and name.endswith("norm.weight"):
            # Gemma3RMSNorm scales by (1 + weight); GGUF stores the sum (norm_shift), in F32
            x = _to_f32(x, info.ggml_type) + np.float32(1)
        elif len(info.shape) == 1 and info.ggml_type != "F32":
            x = _to_f32(x, info.ggml_type)
        elif gemma:
            return raw
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
    n_vocab = len(vocab["tokenizer.ggml.tokens"])
    if cfg["_arch"] == "llama":
        meta["llama.vocab_size"] = n_vocab
    else:
        meta["tokenizer.ggml.add_space_prefix"] = False  # Gemma3Model.set_vocab
    meta |= rope_meta | vocab
    ckpt = read_safetensors(path)
    try:
        names = _tensor_map(ckpt, cfg)
        tensors = {}
        for gguf, hf_name in names.items():
            info = ckpt.tensors[hf_name]
            dtype = "F32" if len(info.shape) == 1 else info.ggml_type
            shape = info.shape
            if gguf == "token_embd.weight" and shape[0] > n_vocab:
                shape = (n_vocab, *shape[1:])
            tensors[gguf] = TensorInfo(gguf, dtype, shape, info.offset, info.nbytes, info.file)
        extra: dict[str, np.ndarray] = {}
        if rope_freqs is not None:
            extra[ROPE_FREQS] = rope_freqs
            tensors[ROPE_FREQS] = TensorInfo(ROPE_FREQS, "F32", rope_freqs.shape, 0, 0, "")
    except BaseException:
        ckpt.close()
        raise
    reader = _reader(ckpt, cfg, names, extra, n_vocab)
    return HFModel(path, _encode(meta), meta, tensors, reader, ckpt.close)
