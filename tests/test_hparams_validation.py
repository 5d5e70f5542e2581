"""Hostile hyperparameters (issue 17 items 8, 9, 10, 14, 15): every one is a typed error that
names the key, the value and the file, raised from the header alone before any allocation.

Small GGUF files are written with warmload's own writer (F32 tensors of a 2-layer llama); HF
configs are config.json dicts read through the architectures' readers. Each case must fail in
well under a second (a block_count of 10^6 once built a million layers).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.gguf_write import FLOAT32, STRING, UINT32, TensorSpec, encode_kv, write_gguf
from warmload.formats.open import open_checkpoint
from warmload.loader import load_model
from warmload.loader.hparams import read_model_config
from warmload.models import registry
from warmload.models.hparams import HFFields

HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV = 32, 64, 2, 40, 4, 2
META = {
    "llama.block_count": LAYERS,
    "llama.context_length": 64,
    "llama.embedding_length": HIDDEN,
    "llama.feed_forward_length": INTER,
    "llama.attention.head_count": HEADS,
    "llama.attention.head_count_kv": KV,
    "llama.rope.freq_base": 10000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
}


def tensors(n_layers: int = LAYERS, vocab: int = VOCAB, rope_freqs: int = 0) -> dict:
    hd = HIDDEN // HEADS
    shapes = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(n_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (KV * hd, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV * hd, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (INTER, HIDDEN),
            f"blk.{i}.ffn_up.weight": (INTER, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, INTER),
        }
    if rope_freqs:
        shapes["rope_freqs.weight"] = (rope_freqs,)
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def write(path: Path, changes: dict | None = None, **kw) -> Path:
    """A tiny llama GGUF with metadata `changes` applied (None values delete the key)."""
    meta = {**META, "general.architecture": "llama"}
    for key, value in (changes or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    n_tokens = kw.pop("n_tokens", VOCAB)
    kv = []
    for key, value in meta.items():
        if isinstance(value, str):
            kv.append(encode_kv(key, value, STRING))
        elif isinstance(value, float):
            kv.append(encode_kv(key, value, FLOAT32))
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
            kv.append(encode_kv(key, value, UINT32))
        else:
            kv.append(encode_kv(key, value))
    kv.append(encode_kv("tokenizer.ggml.tokens", [f"t{i}" for i in range(n_tokens)], None, STRING))
    data = tensors(**kw)
    specs = [(TensorSpec(n, a.shape, "F32"), a) for n, a in data.items()]
    write_gguf(path, kv, specs)
    return path


def failure(path: Path) -> Exception:
    started = time.perf_counter()
    with open_checkpoint(path) as ck, pytest.raises((CheckpointError, UnsupportedError)) as err:
        load_model(ck)
    assert time.perf_counter() - started < 1.0
    return err.value


def test_the_valid_file_loads(tmp_path: Path):
    with open_checkpoint(write(tmp_path / "ok.gguf")) as ck:
        arch, config = read_model_config(ck)
    assert arch == "llama" and config.num_hidden_layers == LAYERS and config.head_dim == 8


GGUF_CASES = [
    # (changed metadata, error class, words the message must hold)
    ({"general.architecture": "qwen9"}, UnsupportedError, "'qwen9' is not supported"),
    ({"llama.block_count": "thirty"}, CheckpointError, "llama.block_count must be an integer"),
    ({"llama.block_count": math.nan}, CheckpointError, "llama.block_count must be an integer"),
    ({"llama.block_count": math.inf}, CheckpointError, "llama.block_count must be an integer"),
    ({"llama.block_count": 10**6}, CheckpointError, "llama.block_count = 1000000 but the file"),
    ({"llama.block_count": 2**32 - 1}, CheckpointError, "llama.block_count = 4294967295"),
    ({"llama.block_count": 0}, CheckpointError, "llama.block_count = 0 is out of range"),
    ({"llama.attention.head_count": 0}, CheckpointError, "head_count = 0 is out of range"),
    ({"llama.attention.head_count_kv": 0}, CheckpointError, "head_count_kv = 0 is out of range"),
    ({"llama.attention.head_count_kv": 3}, CheckpointError, "4 attention heads do not divide"),
    ({"llama.attention.head_count": 5}, CheckpointError, "not a multiple of head_count 5"),
    ({"llama.context_length": -5}, CheckpointError, "llama.context_length"),
    ({"llama.context_length": 0}, CheckpointError, "llama.context_length = 0 is out of range"),
    ({"llama.rope.freq_base": 0.0}, CheckpointError, "llama.rope.freq_base = 0.0 is invalid"),
    ({"llama.rope.freq_base": math.nan}, CheckpointError, "llama.rope.freq_base = nan"),
    (
        {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 0.0},
        CheckpointError,
        "llama.rope.scaling.factor = 0.0 is invalid",
    ),
    (
        {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0},
        UnsupportedError,
        "rope scaling 'yarn'",
    ),
    (
        {"llama.attention.layer_norm_rms_epsilon": math.nan},
        CheckpointError,
        "layer_norm_rms_epsilon = nan is invalid",
    ),
    (
        {"llama.attention.layer_norm_rms_epsilon": -0.5},
        CheckpointError,
        "layer_norm_rms_epsilon = -0.5 is invalid",
    ),
    (
        {"llama.attention.layer_norm_rms_epsilon": None},
        CheckpointError,
        "metadata key 'llama.attention.layer_norm_rms_epsilon' is missing",
    ),
    ({"llama.attention.head_count": [4, 4]}, UnsupportedError, "is an array"),
    ({"llama.rope.dimension_count": 4}, UnsupportedError, "partial rope"),
]


@pytest.mark.parametrize("changes,error,words", GGUF_CASES)
def test_bad_gguf_metadata_is_named(tmp_path: Path, changes, error, words):
    path = write(tmp_path / "bad.gguf", changes)
    err = failure(path)
    assert isinstance(err, error), err
    assert words in str(err) and str(path) in str(err)


def test_architecture_as_an_array(tmp_path: Path):
    path = write(tmp_path / "bad.gguf", {"general.architecture": ["llama", "llama"]})
    err = failure(path)
    assert isinstance(err, UnsupportedError) and "['llama', 'llama'] is not supported" in str(err)


def test_layer_count_comes_from_the_tensors(tmp_path: Path):
    err = failure(write(tmp_path / "bad.gguf", n_layers=3))
    assert "llama.block_count = 2 but the file has tensors for 3 layer(s)" in str(err)


def test_tokenizer_longer_than_the_embedding(tmp_path: Path):
    err = failure(write(tmp_path / "bad.gguf", n_tokens=VOCAB + 5))
    assert "lists 45 tokens but the embedding has 40 rows" in str(err)


def test_rope_freqs_of_the_wrong_size(tmp_path: Path):
    err = failure(write(tmp_path / "bad.gguf", rope_freqs=3))
    assert "'rope_freqs.weight' has 3 factors; rope over 8 head dims needs 4" in str(err)


# ------------------------------------------------------------------------------ config.json

LLAMA_JSON = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 40,
}

HF_CASES = [
    ({"num_hidden_layers": "30"}, CheckpointError, "num_hidden_layers must be an integer, not str"),
    ({"hidden_size": "tiny"}, CheckpointError, "hidden_size must be an integer, not str 'tiny'"),
    ({"hidden_size": 32.0}, CheckpointError, "hidden_size must be an integer, not float"),
    ({"hidden_size": True}, CheckpointError, "hidden_size must be an integer, not bool"),
    ({"num_attention_heads": 0}, CheckpointError, "num_attention_heads = 0 is out of range"),
    ({"num_key_value_heads": 3}, CheckpointError, "4 attention heads do not divide"),
    ({"num_hidden_layers": 10**6}, CheckpointError, "num_hidden_layers = 1000000 is out of range"),
    ({"rms_norm_eps": "1e-5"}, CheckpointError, "rms_norm_eps must be a number"),
    ({"rope_theta": 0}, CheckpointError, "rope_theta = 0.0 is invalid"),
    ({"rope_scaling": "linear"}, CheckpointError, "rope_scaling must be an object"),
    ({"rope_scaling": {"rope_type": "linear"}}, CheckpointError, "has no 'factor'"),
    (
        {"rope_scaling": {"rope_type": "linear", "factor": 0}},
        CheckpointError,
        "rope_scaling.factor = 0.0 is invalid",
    ),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, UnsupportedError, "type 'yarn'"),
    ({"tie_word_embeddings": "yes"}, CheckpointError, "tie_word_embeddings must be true or false"),
    ({"attention_bias": True}, UnsupportedError, "attention_bias = True"),
    ({"hidden_act": "relu"}, UnsupportedError, "hidden_act = 'relu'"),
]


@pytest.mark.parametrize("changes,error,words", HF_CASES)
def test_bad_config_json_is_named(changes, error, words):
    config = {**LLAMA_JSON, **changes}
    with pytest.raises(error) as err:
        registry.module("llama").config_from_hf(HFFields(config, "x/config.json"))
    assert words in str(err.value) and "x/config.json" in str(err.value)


def test_hf_layer_count_against_the_weights(tmp_path: Path):
    """A num_hidden_layers the safetensors do not hold fails before any module is built."""
    from warmload.formats.safetensors_write import write_safetensors

    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_JSON, "num_hidden_layers": 9}))
    ones = np.ones(32, np.float32).tobytes()
    sd = {f"model.layers.{i}.input_layernorm.weight": ("F32", (32,), ones) for i in range(2)}
    write_safetensors(tmp_path / "model.safetensors", sd)
    started = time.perf_counter()
    with open_checkpoint(tmp_path) as ck, pytest.raises(CheckpointError) as err:
        read_model_config(ck)
    assert time.perf_counter() - started < 1.0
    assert "num_hidden_layers = 9 but the file has tensors for 2 layer(s)" in str(err.value)


@pytest.mark.parametrize("arch", [a.name for a in registry.ARCHITECTURES])
def test_every_architecture_checks_its_config(arch):
    """Each registered reader refuses a string where a count belongs and heads that do not
    divide (the checks live in each architecture's reader, so each is asked)."""
    entry = registry.find(arch)
    base = {**LLAMA_JSON, "model_type": entry.hf_model_types[0]}
    reader = registry.module(arch).config_from_hf
    with pytest.raises(CheckpointError, match="num_hidden_layers must be an integer"):
        reader(HFFields({**base, "num_hidden_layers": "30"}, "x/config.json"))
    with pytest.raises(CheckpointError, match="do not divide"):
        reader(HFFields({**base, "num_key_value_heads": 3}, "x/config.json"))
