"""A Hugging Face model folder as a quantizer source: GGUF metadata and tensors, converted on
the fly the way llama.cpp's convert_hf_to_gguf.py writes them (no intermediate file).

Reference: llama.cpp convert_hf_to_gguf.py (set_gguf_parameters, modify_tensors,
generate_extra_tensors) and gguf-py's tensor_mapping.py. Everything architecture-specific comes
from the registry (warmload.models.registry) and the architecture's module: config.json is read
and checked by its config_from_hf (the loader's own reader, so what converts also loads),
its gguf_metadata writes the `{arch}.*` keys, its GGUF_TENSOR_NAMES table is inverted for the
names and gguf_tensor reshapes a tensor where GGUF stores it differently (llama q/k rows
permuted for llama.cpp's rope, Gemma norms stored as 1 + w). tokenizer.json & co ->
`tokenizer.*` (hf_vocab.py); *.safetensors (one file or index shards, formats/safetensors.py);
1-D tensors as F32, 2-D ones in their stored dtype (F32, F16 or BF16; the quantizer converts
them). The architecture modules import torch, on first use only.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class _Source:
    """What a folder converts as: its config.json, our architecture and its module, the config."""

    cfg: dict[str, Any]
    arch: str
    gguf_arch: str
    module: Any
    config: Any


def _source(folder: Path) -> _Source:
    """config.json -> the registry's architecture (by its "architectures" classes) and the
    config its module reads (checked: a config that would not load does not convert)."""
    from warmload.models import registry
    from warmload.models.hparams import HFFields

    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder?)")
    cfg = read_json(inside_folder(folder, "config.json", "config.json"))  # any shape, any depth
    classes = cfg.get("architectures")
    classes = classes if isinstance(classes, list) else []
    archs = [
        registry.HF_CLASSES[c] for c in classes if isinstance(c, str) and c in registry.HF_CLASSES
    ]
    if not archs:
        raise UnsupportedError(
            f"{path}: architecture {classes!r:.80} cannot be converted; supported: "
            f"{', '.join(sorted(registry.HF_CLASSES))}"
        )
    arch = archs[0]
    entry = registry.find(arch)
    module = registry.module(arch)
    config = module.config_from_hf(HFFields(cfg, str(path)))
    return _Source(cfg, arch, entry.gguf_arch or arch, module, config)


def _gguf_name(table: dict[str, str]) -> Callable[[str], str | None]:
    """HF parameter name -> GGUF name, the architecture's GGUF_TENSOR_NAMES inverted."""
    patterns = []
    for gguf, hf in table.items():
        regex = re.escape(hf).replace(re.escape("{i}"), r"(\d+)")
        patterns.append((re.compile(regex), gguf))

    def name(hf_name: str) -> str | None:
        for regex, gguf in patterns:
            m = regex.fullmatch(hf_name)
            if m:
                return gguf.format(i=m.group(1)) if m.groups() else gguf
        return None

    return name


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


def _tensor_map(ckpt: Checkpoint, src: _Source) -> dict[str, str]:
    """GGUF name -> HF name; unknown tensors are an error, a tied lm_head is dropped."""
    names, unknown = {}, []
    to_gguf = _gguf_name(src.module.GGUF_TENSOR_NAMES)
    tied = src.config.tie_word_embeddings
    for hf_name in ckpt.tensors:
        gguf = to_gguf(hf_name)
        if gguf is None:
            if not _SKIPPED.match(hf_name):
                unknown.append(hf_name)
            continue
        if gguf == "output.weight" and tied:
            continue
        names[gguf] = hf_name
    if unknown:
        raise UnsupportedError(
            f"{ckpt.path}: tensors with no GGUF name: {', '.join(sorted(unknown)[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}"
        )
    return names


def _reader(
    ckpt: Checkpoint, src: _Source, names: dict[str, str], extra: dict, n_vocab: int
) -> Callable[[str], Any]:
    def tensor_bytes(name: str) -> Any:
        """The tensor's bytes in GGUF layout, as a flat buffer (1-D uint8 or memoryview)."""
        if name in extra:
            return extra[name].view(np.uint8).reshape(-1)
        info = ckpt.tensors[names[name]]
        raw = ckpt.tensor_bytes(names[name])
        if info.ggml_type not in _FLOATS:
            raise UnsupportedError(f"tensor {info.name!r} is {info.ggml_type}; F32/F16/BF16 only")
        stored = np.frombuffer(raw, _FLOATS[info.ggml_type]).reshape(info.shape)
        x = stored
        if name == "token_embd.weight" and x.shape[0] > n_vocab:
            x = x[:n_vocab]  # rows past the vocab (Gemma 3 pads its embedding)
        if len(info.shape) == 1 and info.ggml_type != "F32":
            x = _to_f32(x, info.ggml_type)  # 1-D tensors are written as F32
        # 2-D tensors keep their dtype (BF16 as uint16 bits): only rows move (permute)
        y = src.module.gguf_tensor(name, x, src.config)
        if y is stored:
            return raw
        return np.ascontiguousarray(y).view(np.uint8).reshape(-1)

    return tensor_bytes


def _to_f32(x: np.ndarray, ggml_type: str) -> np.ndarray:
    if ggml_type == "BF16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def open_hf_folder(folder: str | Path) -> HFModel:
    """Open a Hugging Face model folder for conversion: headers, config and tokenizer only."""
    path = Path(folder)
    src = _source(path)
    arch_meta, rope_freqs = src.module.gguf_metadata(src.config)
    meta: dict[str, Any] = {
        "general.architecture": src.gguf_arch,
        "general.name": path.resolve().name,
        **arch_meta,
    }
    vocab = tokenizer_metadata(path, src.cfg)
    n_vocab = len(vocab["tokenizer.ggml.tokens"])
    if f"{src.gguf_arch}.vocab_size" in meta:
        meta[f"{src.gguf_arch}.vocab_size"] = n_vocab
    if src.gguf_arch.startswith("gemma"):
        meta["tokenizer.ggml.add_space_prefix"] = False  # Gemma3Model.set_vocab
    meta |= vocab
    ckpt = read_safetensors(path)
    try:
        names = _tensor_map(ckpt, src)
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
    reader = _reader(ckpt, src, names, extra, n_vocab)
    return HFModel(path, _encode(meta), meta, tensors, reader, ckpt.close)
