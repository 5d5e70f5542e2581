"""quantize_checkpoint on a Hugging Face folder (hf_convert, hf_vocab): a tiny Llama made and
saved by transformers with SmolLM2's real vocabulary as a standard tokenizer.json; the GGUF
must give transformers' logits in warmload, tokenize as tokenizer.json does in warmload and in
llama.cpp, and carry the chat template and special ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.gguf import read_gguf
from warmload.hf_vocab import PROBE_TEXT
from warmload.quantizer import quantize_checkpoint

TEXT = "The quick brown fox, 1234 jumps! Ünïcödé 中文 🙂\n  done."


def _tokenizer_json(smollm2: Path, folder: Path) -> dict:
    """SmolLM2's vocab and merges as Hugging Face ships them: BPE, Digits + ByteLevel."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    meta = read_gguf(smollm2).metadata
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = np.asarray(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, k in zip(tokens, types) if k == 3])
    tok.save(str(folder / "tokenizer.json"))
    return meta


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    folder.mkdir()
    meta = _tokenizer_json(smollm2_path, folder)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, initializer_range=0.1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # norms away from 1 so that their layout matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.rand_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": {"content": "<|im_end|>", "special": True}, "add_bos_token": False,
        "chat_template": meta["tokenizer.chat_template"],
    }))  # fmt: skip
    return folder


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.peer
def test_hf_folder_converts_like_transformers(hf_folder: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    import warmload

    hf_tok = Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
    ids = hf_tok.encode(TEXT, add_special_tokens=False).ids
    r = quantize_checkpoint(hf_folder, tmp_path / "f32.gguf", "F32")
    meta = read_gguf(r.path).metadata
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 0
    assert meta["tokenizer.ggml.pre"] == "smollm" and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.padding_token_id"] == 2
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["llama.rope.freq_base"] == 500000.0
    assert "output.weight" not in r.tensor_types  # tied embeddings
    assert r.tensor_types["rope_freqs.weight"] == "F32"  # llama3 rope scaling
    assert r.tensor_types["blk.0.attn_norm.weight"] == "F32"
    tok = warmload.load_tokenizer(r.path)
    assert tok.encode(TEXT, add_special=False) == ids
    assert tok.encode(PROBE_TEXT, add_special=False) == hf_tok.encode(PROBE_TEXT).ids
    ours = warmload.load(str(r.path)).logits(ids).float().numpy()
    ref = _hf_logits(hf_folder, ids)
    np.testing.assert_allclose(ours, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)
    q8 = quantize_checkpoint(hf_folder, tmp_path / "q8.gguf", "Q8_0")
    assert r.src_nbytes == (hf_folder / "model.safetensors").stat().st_size
    q = warmload.load(str(q8.path)).logits(ids).float().numpy()
    assert (q.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert (tmp_path / "q8.gguf.sha256").read_text().startswith(q8.sha256)


@pytest.mark.peer
def test_hf_conversion_tokenizes_like_llama_cpp(hf_folder: Path, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer

    r = quantize_checkpoint(hf_folder, tmp_path / "bf16.gguf", "BF16")
    assert set(r.tensor_types.values()) == {"BF16", "F32"}
    llm = llama_cpp.Llama(str(r.path), vocab_only=True, verbose=False)
    want = Tokenizer.from_file(str(hf_folder / "tokenizer.json")).encode(PROBE_TEXT).ids
    assert llm.tokenize(PROBE_TEXT.encode(), add_bos=False) == want


def test_hf_folder_errors(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        quantize_checkpoint(folder, tmp_path / "q.gguf", "Q8_0")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedError, match="BertModel.*LlamaForCausalLM"):
        quantize_checkpoint(folder, tmp_path / "q.gguf", "Q8_0")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "hidden_size": 64,
        "num_hidden_layers": 1, "max_position_embeddings": 64, "intermediate_size": 128,
    }))  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []}}
    ))  # fmt: skip
    with pytest.raises(UnsupportedError, match="byte_fallback"):
        quantize_checkpoint(folder, tmp_path / "q.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _write_sentencepiece(path: Path, tokens: list[str], scores, types) -> None:
    """A SentencePiece tokenizer.model (ModelProto with only its pieces)."""
    import struct

    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))

    parts = []
    for text, score, kind in zip(tokens, scores, types):
        b = text.encode("utf-8")
        piece = b"\x0a" + varint(len(b)) + b + b"\x15" + struct.pack("<f", score)
        piece += b"\x18" + varint(int(kind))
        parts.append(b"\x0a" + varint(len(piece)) + piece)
    path.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory: pytest.TempPathFactory, gemma3_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-gemma3"
    folder.mkdir()
    meta = read_gguf(gemma3_path).metadata
    tokens = list(meta["tokenizer.ggml.tokens"])
    _write_sentencepiece(
        folder / "tokenizer.model", tokens, meta["tokenizer.ggml.scores"],
        meta["tokenizer.ggml.token_type"],
    )  # fmt: skip
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=512, max_position_embeddings=1024, initializer_range=0.1,
    )  # fmt: skip
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 * torch.rand_like(p) - 0.25)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
        "add_bos_token": True, "add_eos_token": False, "chat_template": "{{ messages }}",
    }))  # fmt: skip
    return folder


@pytest.mark.peer
def test_gemma3_folder_converts_like_transformers(
    gemma_folder: Path, gemma3_path: Path, tmp_path: Path
) -> None:
    import torch
    import transformers

    import warmload

    r = quantize_checkpoint(gemma_folder, tmp_path / "g.gguf", "F32")
    meta = read_gguf(r.path).metadata
    assert meta["general.architecture"] == "gemma3" and meta["tokenizer.ggml.model"] == "llama"
    assert meta["gemma3.attention.sliding_window"] == 512 and meta["gemma3.rope.freq_base"] == 1e6
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (2, 1)
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.chat_template"] == "{{ messages }}"
    ref_tok, tok = warmload.load_tokenizer(gemma3_path), warmload.load_tokenizer(r.path)
    ids = ref_tok.encode(TEXT)
    assert tok.encode(TEXT) == ids and tok.encode(PROBE_TEXT) == ref_tok.encode(PROBE_TEXT)
    ours = warmload.load(str(r.path)).logits(ids).float().numpy()
    hf = transformers.Gemma3ForCausalLM.from_pretrained(gemma_folder, torch_dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(r.path), vocab_only=True, verbose=False)
    assert llm.tokenize(PROBE_TEXT.encode(), add_bos=True) == ref_tok.encode(PROBE_TEXT)
