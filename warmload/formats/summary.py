"""What a checkpoint holds, as plain JSON-ready data for `warmload inspect` (the CLI renders it).

The GGUF keys read are those of the GGUF spec (ggml/docs/gguf.md) and llama.cpp's llama-arch.cpp:
general.*, {arch}.context_length, tokenizer.ggml.*; the file type names follow llama.cpp's
llama_model_ftype_name. SafeTensors folders answer from config.json (Hugging Face names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from warmload.formats.checkpoint import Checkpoint
from warmload.formats.ggml_types import FILE_TYPE_NAMES

MAX_JSON_ITEMS = 16  # arrays longer than this are summarized as "[N items]"


def _file_type(checkpoint: Checkpoint, hist: dict[str, dict[str, int]]) -> str | None:
    ftype = checkpoint.metadata.get("general.file_type")
    if isinstance(ftype, int) and not isinstance(ftype, bool):
        return FILE_TYPE_NAMES.get(ftype, f"unknown ({ftype})")
    if hist:  # SafeTensors, or GGUF without the key: the type holding most bytes
        return max(hist.items(), key=lambda kv: kv[1]["nbytes"])[0]
    return None


def _gguf_facts(md: dict[str, Any]) -> dict[str, Any]:
    arch = md.get("general.architecture")
    tokens = md.get("tokenizer.ggml.tokens")
    # a hostile file may store anything under any key: only an array has a length
    vocab = len(tokens) if isinstance(tokens, list) else md.get(f"{arch}.vocab_size")
    return {
        "architecture": arch,
        "name": md.get("general.name"),
        "context_length": md.get(f"{arch}.context_length"),
        "tokenizer_model": md.get("tokenizer.ggml.model"),
        "tokenizer_pre": md.get("tokenizer.ggml.pre"),
        "vocab_size": vocab,
        "has_chat_template": isinstance(md.get("tokenizer.chat_template"), str),
    }


def _safetensors_facts(checkpoint: Checkpoint) -> dict[str, Any]:
    md = checkpoint.metadata
    config = md.get("config") if isinstance(md.get("config"), dict) else {}
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    return {
        "architecture": config.get("model_type") or arch,
        "name": config.get("_name_or_path") or checkpoint.path.name,
        "context_length": config.get("max_position_embeddings"),
        "tokenizer_model": "tokenizer.json" if md.get("hf.tokenizer_json") else None,
        "tokenizer_pre": None,
        "vocab_size": config.get("vocab_size"),
        "has_chat_template": isinstance(md.get("tokenizer.chat_template"), str),
    }


def summarize(checkpoint: Checkpoint) -> dict[str, Any]:
    """A JSON-serialisable summary: identity, sizes, tokenizer, type histogram, tensor list."""
    hist: dict[str, dict[str, int]] = {}
    n_params = 0
    for t in checkpoint.tensors.values():
        h = hist.setdefault(t.ggml_type, {"count": 0, "nbytes": 0})
        h["count"] += 1
        h["nbytes"] += t.nbytes
        n_params += t.n_elements
    hist = dict(sorted(hist.items(), key=lambda kv: -kv[1]["nbytes"]))
    files = sorted({t.file for t in checkpoint.tensors.values()} or {str(checkpoint.path)})
    if checkpoint.format == "gguf":
        facts = _gguf_facts(checkpoint.metadata)
    else:
        facts = _safetensors_facts(checkpoint)
    summary: dict[str, Any] = {
        "path": str(checkpoint.path),
        "format": checkpoint.format,
        **facts,
        "parameter_count": n_params,
        "file_type": _file_type(checkpoint, hist),
        "file_size": sum(os.path.getsize(f) for f in files if os.path.isfile(f)),
        "tensor_count": len(checkpoint.tensors),
        "tensor_types": hist,
        "tensors": [
            {
                "name": t.name,
                "type": t.ggml_type,
                "shape": list(t.shape),
                "offset": t.offset,
                "nbytes": t.nbytes,
                "file": Path(t.file).name,
            }
            for t in checkpoint.tensors.values()
        ],
    }
    if checkpoint.format == "gguf":
        summary["gguf_version"] = checkpoint.version
        summary["alignment"] = checkpoint.alignment
        summary["data_offset"] = checkpoint.data_offset
    return to_json(summary)


def to_json(value: Any, max_items: int | None = None) -> Any:
    """Metadata value -> JSON-ready value; sequences longer than max_items -> "[N items]"."""
    if isinstance(value, np.ndarray | list | tuple):
        if max_items is not None and len(value) > max_items:
            return f"[{len(value)} items]"
        items = value.tolist() if isinstance(value, np.ndarray) else value
        return [to_json(v, max_items) for v in items]
    if isinstance(value, dict):
        return {to_json(str(k)): to_json(v, max_items) for k, v in value.items()}
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: non-UTF-8 bytes kept by the reader
            try:  # show them as the file's bytes: \xff
                raw = value.encode("utf-8", "surrogateescape")
                return raw.decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # other lone surrogates (from JSON): \ud800
                return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def metadata_for_json(metadata: dict[str, Any], max_items: int = MAX_JSON_ITEMS) -> dict[str, Any]:
    """Every metadata key, JSON-ready, long arrays (tokens, scores, merges) as "[N items]"."""
    return {to_json(str(key)): to_json(value, max_items) for key, value in metadata.items()}
