"""Hugging Face model folders: the real GGUF models written out by scripts/export_hf.py load
through the same pipeline and give the same logits, tokens and chat prompts as the GGUF files.

The GGUF side loads with packed=False: its weights dequantized to float, as the folder's, so both
run the same float products (packed GGUF weights take 8-bit activations on short prompts).
Tolerances follow the exported dtype. F32: the weights are the GGUF's dequantized values
exactly, only the rope path differs (GGUF's permuted rows with adjacent-pair rotation vs HF's
rows with rotate_half), so logits agree to float32 rounding accumulated over the layers:
|diff| <= 1e-5 * max|logit| (measured 1.3e-6). BF16: each weight is rounded to 8 significant
bits (relative error <= 2^-9), the errors of a dot product add up as a random walk, and
measured logits move by <= 0.6% of max|logit|: we allow 2%, and ask the same argmax.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import warmload
from warmload.config import LoadConfig
from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.open import open_checkpoint
from warmload.formats.safetensors_write import write_safetensors
from warmload.loader.hparams import read_model_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_hf.py"
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Bonjour, je m'appelle")
TEXTS = (
    "Hello world",
    "naïve café 日本語 🤖  two  spaces\n\ttab",
    "<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>user\nWhy?<end_of_turn>",
)
# model -> (export dtype, shard size in MB (0: one file), relative logit tolerance)
EXPORTS = {"smollm2": ("F32", 200, 1e-5), "gemma3-270m": ("BF16", 0, 2e-2)}


def load_script():
    spec = importlib.util.spec_from_file_location("export_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def export_hf():
    return load_script()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("smollm2"),
        pytest.param("gemma3-270m", marks=pytest.mark.slow),  # a 262k vocab: ~40 s on 2 cores
    ],
)
def engines(request, tmp_path_factory, export_hf):
    """(GGUF engine, HF-folder engine, folder) of one real model."""
    name = request.param
    dtype, shard_mb, _ = EXPORTS[name]
    folder = export_hf.export_hf(name, tmp_path_factory.mktemp(name), dtype, shard_mb)
    gguf, hf = warmload.load(name, packed=False), warmload.load(folder)
    yield gguf, hf, folder
    gguf.close()
    hf.close()


def test_folder_has_what_transformers_writes(engines):
    _, hf, folder = engines
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert hf.checkpoint.format == "safetensors"
    sharded = "model.safetensors.index.json" in names
    assert sharded == (len({t.file for t in hf.checkpoint.tensors.values()}) > 1)


def test_same_logits(engines, request):
    gguf, hf, _ = engines
    tolerance = EXPORTS[request.node.callspec.id][2]
    for prompt in PROMPTS:
        ids = gguf.tokenizer.encode(prompt)
        a, b = gguf.logits(ids), hf.logits(ids)
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= tolerance * scale, prompt
        assert torch.equal(a.argmax(-1), b.argmax(-1)), prompt


def test_same_tokenizer_and_chat_prompt(engines):
    gguf, hf, _ = engines
    a, b = gguf.tokenizer, hf.tokenizer
    assert (a.bos_id, a.eos_id, a.stop_ids, a.add_bos) == (
        b.bos_id,
        b.eos_id,
        b.stop_ids,
        b.add_bos,
    )
    for text in TEXTS:
        for parse_special in (False, True):
            ids = a.encode(text, parse_special=parse_special)
            assert b.encode(text, parse_special=parse_special) == ids, (text, parse_special)
            assert b.decode(ids, skip_special=False) == a.decode(ids, skip_special=False)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert hf.chat_prompt(messages) == gguf.chat_prompt(messages)


def test_cli_runs_a_folder(engines, capsys):
    from warmload.cli import main

    gguf, _, folder = engines
    assert main(["run", "-m", str(folder), "-p", PROMPTS[0], "-n", "4", "--temp", "0"]) == 0
    messages = [{"role": "user", "content": PROMPTS[0]}]
    expected = gguf.generate(gguf.chat_prompt(messages), max_tokens=4, temperature=0).text
    assert expected.strip() in capsys.readouterr().out


def test_unpermute_inverts_llama_cpp_permute(export_hf):
    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)

    w = torch.arange(6 * 8 * 3, dtype=torch.float32).reshape(6 * 8, 3)
    for heads in (1, 2, 6):
        assert torch.equal(export_hf.unpermute(permute(w, heads).reshape(w.shape), heads), w)


# -- small folders: config and tokenizer-config rules -------------------------------------------


def tiny_llama_folder(folder: Path, **config) -> Path:
    shapes = {
        "model.embed_tokens.weight": (16, 8),
        "model.norm.weight": (8,),
        "model.layers.0.input_layernorm.weight": (8,),
        "model.layers.0.post_attention_layernorm.weight": (8,),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.self_attn.k_proj.weight": (4, 8),
        "model.layers.0.self_attn.v_proj.weight": (4, 8),
        "model.layers.0.self_attn.o_proj.weight": (8, 8),
        "model.layers.0.mlp.gate_proj.weight": (12, 8),
        "model.layers.0.mlp.up_proj.weight": (12, 8),
        "model.layers.0.mlp.down_proj.weight": (8, 12),
        "lm_head.weight": (16, 8),  # saved although tied: ignored
    }
    rng = np.random.default_rng(0)
    tensors = {
        n: ("F16", s, rng.standard_normal(s).astype(np.float16).tobytes())
        for n, s in shapes.items()
    }
    write_safetensors(folder / "model.safetensors", tensors)
    base = dict(
        model_type="llama",
        vocab_size=16,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return folder


def test_tiny_folder_config_maps_one_to_one(tmp_path):
    folder = tiny_llama_folder(tmp_path, rope_theta=5e5, rms_norm_eps=1e-5)
    with open_checkpoint(folder) as ck:
        arch, config = read_model_config(ck)
    assert arch == "llama" and config.rope_style == "neox"
    assert (config.head_dim, config.num_key_value_heads, config.rope_theta) == (4, 1, 5e5)
    with open_checkpoint(folder) as ck:
        from warmload.loader import load_model

        model, stats = load_model(ck)
    # F16 weights stay packed: the tied output layer reads the embeddings' own bytes
    assert model.lm_head.blocks is model.model.embed_tokens.blocks
    assert stats.n_tensors == 11


def test_rope_parameters_of_transformers_5(tmp_path):
    params = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    folder = tiny_llama_folder(tmp_path, rope_parameters=params)
    with open_checkpoint(folder) as ck:
        _, config = read_model_config(ck)
    assert config.rope_theta == 1e4 and config.rope_scaling["factor"] == 2.0


@pytest.mark.parametrize(
    "config,error,words",
    [
        ({"model_type": "bert"}, UnsupportedError, "model_type 'bert'"),
        ({"model_type": "gemma3"}, UnsupportedError, "supported: .*gemma3_text, llama"),
        ({"attention_bias": True}, UnsupportedError, "attention_bias"),
        ({"hidden_act": "gelu"}, UnsupportedError, "hidden_act"),
        ({"hidden_size": None}, CheckpointError, "'hidden_size' is missing"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, config, error, words):
    folder = tiny_llama_folder(tmp_path, **config)
    with open_checkpoint(folder) as ck, pytest.raises(error, match=words):
        read_model_config(ck)


def test_no_config_json(tmp_path):
    folder = tiny_llama_folder(tmp_path)
    (folder / "config.json").unlink()
    with open_checkpoint(folder) as ck, pytest.raises(CheckpointError, match="no config.json"):
        read_model_config(ck)


def test_chat_template_sources(tmp_path):
    folder = tiny_llama_folder(tmp_path)
    templates = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    with open_checkpoint(folder) as ck:
        assert ck.metadata["tokenizer.chat_template"] == "D"
        assert ck.metadata["general.architecture"] == "llama"
    (folder / "chat_template.jinja").write_text("J")
    with open_checkpoint(folder) as ck:
        assert ck.metadata["tokenizer.chat_template"] == "J"
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        open_checkpoint(folder)


@pytest.mark.parametrize("mode", ["mmap", "memory", "read"])
def test_sharded_folder_in_every_load_mode(tmp_path, mode):
    from warmload.formats.safetensors_write import write_sharded
    from warmload.loader import load_model

    (tmp_path / "one").mkdir()
    single = tiny_llama_folder(tmp_path / "one")
    with open_checkpoint(single) as ck:
        reference, _ = load_model(ck)
        tensors = {
            name: (t.ggml_type, t.shape, ck.tensor_bytes(name)) for name, t in ck.tensors.items()
        }
        sharded = tmp_path / "sharded"
        sharded.mkdir()
        paths = write_sharded(sharded, tensors, max_shard_bytes=300)
    (sharded / "config.json").write_text((single / "config.json").read_text())
    assert len(paths) > 3
    with open_checkpoint(sharded, load_mode=mode) as ck:
        model, _ = load_model(ck, LoadConfig(load_mode=mode))
        assert len({t.file for t in ck.tensors.values()}) == len(paths)
    for (name, a), (_, b) in zip(reference.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


def tiny_tokenizer_folder(folder: Path, post_bos: bool, config: dict) -> Path:
    """A byte-level BPE tokenizer.json (Llama 3 style: BOS from the post-processor)."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["Ġh"] = len(vocab)
    backend = RustTokenizer(BPE(vocab=vocab, merges=[("Ġ", "h")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|begin|>", "<|eot_id|>"])
    backend.add_tokens(["<tool>"])
    if post_bos:
        begin = backend.token_to_id("<|begin|>")
        backend.post_processor = processors.TemplateProcessing(
            single="<|begin|> $A", special_tokens=[("<|begin|>", begin)]
        )
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "post_bos,config,add_bos",
    [
        (True, {"bos_token": "<|begin|>"}, True),  # no flag: the post-processor decides
        (True, {"bos_token": "<|begin|>", "add_bos_token": False}, False),  # the flag wins
        (False, {}, False),
    ],
)
def test_hf_tokenizer_bos_and_attributes(tmp_path, post_bos, config, add_bos):
    from warmload.tokenizer import build_tokenizer
    from warmload.tokenizer.vocab import ATTR_CONTROL, ATTR_USER_DEFINED

    folder = tiny_llama_folder(tmp_path, eos_token_id=[258, 257], vocab_size=300)
    tiny_tokenizer_folder(folder, post_bos, config)
    with open_checkpoint(folder) as ck:
        tok = build_tokenizer(ck.metadata)
    begin, eot, tool = (tok.token_to_id(t) for t in ("<|begin|>", "<|eot_id|>", "<tool>"))
    assert tok.model == "gpt2" and tok.add_bos == add_bos and tok.vocab_size == 300
    assert tok.vocab.attrs[begin] & ATTR_CONTROL and tok.vocab.attrs[tool] & ATTR_USER_DEFINED
    assert eot in tok.stop_ids  # by llama.cpp's text rule and config.json's list
    ids = tok.encode("a h<tool>", parse_special=True)
    assert ids[: int(add_bos)] == ([begin] if add_bos else [])
    assert tok.decode(ids, skip_special=True) == "a h<tool>"
    assert tok.token_to_piece(299) == b""  # a padded id past the tokenizer renders as nothing
