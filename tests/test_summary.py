"""summarize and metadata_for_json: golden summaries of the two real models (parameter counts
are the published ones: 134,515,008 for SmolLM2-135M, 268,098,176 for Gemma 3 270M), JSON
round trips, and the truncation of long arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_safetensors import make_sharded

from warmload.formats.open import open_checkpoint
from warmload.formats.summary import metadata_for_json, summarize, to_json


def test_smollm2_summary(smollm2_path: Path) -> None:
    with open_checkpoint(smollm2_path) as ck:
        s = summarize(ck)
    assert json.loads(json.dumps(s)) == s
    expected = {
        "format": "gguf",
        "architecture": "llama",
        "context_length": 8192,
        "tokenizer_model": "gpt2",
        "tokenizer_pre": "smollm",
        "vocab_size": 49152,
        "has_chat_template": True,
        "parameter_count": 134515008,
        "file_type": "Q4_1",
        "file_size": 98362432,
        "tensor_count": 272,
        "gguf_version": 3,
        "data_offset": 1785664,
    }
    assert {k: s[k] for k in expected} == expected
    assert s["tensor_types"] == {
        "Q4_1": {"count": 210, "nbytes": 66355200},
        "Q8_0": {"count": 1, "nbytes": 30081024},
        "F32": {"count": 61, "nbytes": 140544},
    }
    assert s["tensors"][0] == {
        "name": "token_embd.weight",
        "type": "Q8_0",
        "shape": [49152, 576],
        "offset": 1785664,
        "nbytes": 30081024,
        "file": smollm2_path.name,
    }


def test_gemma3_summary(gemma3_path: Path) -> None:
    with open_checkpoint(gemma3_path) as ck:
        s = summarize(ck)
    assert (s["architecture"], s["name"], s["file_type"]) == (
        "gemma3",
        "Gemma 3 270m",
        "Q4_K - Medium",
    )
    assert (s["parameter_count"], s["vocab_size"], s["context_length"]) == (
        268098176,
        262144,
        32768,
    )
    assert s["has_chat_template"] is False and s["tokenizer_model"] == "llama"
    assert list(s["tensor_types"]) == ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"]  # by bytes
    assert sum(h["count"] for h in s["tensor_types"].values()) == 236 == len(s["tensors"])
    assert len(json.dumps(s)) < 100_000


def test_metadata_for_json_truncates_long_arrays(gemma3_path: Path) -> None:
    with open_checkpoint(gemma3_path) as ck:
        md = metadata_for_json(ck.metadata)
        assert list(md) == list(ck.metadata)
    assert md["tokenizer.ggml.tokens"] == "[262144 items]"
    assert md["tokenizer.ggml.scores"] == "[262144 items]"
    assert md["general.tags"] == ["gemma3", "gemma", "google", "text-generation"]
    assert md["gemma3.block_count"] == 18 and md["tokenizer.ggml.add_bos_token"] is True
    text = json.dumps(md)
    assert len(text) < 10_000 and json.loads(text) == md


def test_to_json_values() -> None:
    value = {
        "a": np.arange(3, dtype=np.int16),
        "f": np.float32(0.5),
        "nan": float("nan"),
        "nested": [np.array([True]), ["x"]],
        "bad": "ok\udcff",  # a non-UTF-8 byte kept by the reader
    }
    out = to_json(value)
    assert out == {
        "a": [0, 1, 2],
        "f": 0.5,
        "nan": "nan",
        "nested": [[True], ["x"]],
        "bad": "ok\\xff",  # the file's byte, as Python writes it
    }
    assert json.loads(json.dumps(out)) == out
    assert to_json(list(range(20)), max_items=16) == "[20 items]"
    assert type(to_json(np.arange(2))[0]) is int


def test_safetensors_folder_summary(tmp_path: Path) -> None:
    make_sharded(tmp_path)
    with open_checkpoint(tmp_path) as ck:
        s = summarize(ck)
    assert s["format"] == "safetensors" and s["architecture"] == "llama"
    assert s["tensor_count"] == 11 and s["file_type"] == "F32"  # the type with most bytes
    assert s["parameter_count"] == 12 + 4 + 4 + 2 + 1 + 2 + 3 + 2 + 3 + 1 + 0
    assert s["file_size"] == sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert {t["file"] for t in s["tensors"]} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert json.loads(json.dumps(s)) == s
