"""Hostile and broken model files, one writer per class of defect (issue 17), numpy only.

    .venv/bin/python tests/hostile.py OUT_DIR     # writes every case into OUT_DIR

Each case starts from one tiny valid llama GGUF (a 300-token SentencePiece vocab with the 256
byte tokens, 2 layers, hidden 64, F32/F16/Q4_1/Q4_K weights) or a tiny Hugging Face folder, and
breaks exactly one thing. `CASES` maps a name to (writer, command): the command is the
`warmload` command that must end in `error: ...` and exit 2 on it ("run": `warmload run`;
"run-check": the same with --check-tensors; "inspect-ok": `warmload inspect` must print it, exit 0,
in printable text); tests/test_hostile_files.py runs them all. No real weights: every file is
made on the fly.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from warmload.formats.gguf_write import (
    ARRAY,
    STRING,
    UINT64,
    RawKV,
    TensorSpec,
    encode_kv,
    write_gguf,
)
from warmload.quant.quantize import quantize

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CTX = 64, 256, 2, 4, 2, 128
SPECIAL = ["<unk>", "<s>", "</s>"]
WORDS = ["▁the", "▁a", "▁sky", "▁is", "▁blue", "th", "e", "▁", "s", "k", "y", "b", "l", "u"]


def vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocab: specials, the 256 byte tokens, a few words and letters."""
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    tokens += [f"▁w{i}" for i in range(300 - len(tokens))]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    return tokens, scores, types


def base_kv(overrides: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> list[RawKV]:
    """The metadata of the base model; overrides: key -> value or a ready RawKV."""
    tokens, scores, types = vocab()
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": "hostile-base",
        "general.alignment": np.uint32(32),
        "llama.block_count": np.uint32(LAYERS),
        "llama.context_length": np.uint32(CTX),
        "llama.embedding_length": np.uint32(HIDDEN),
        "llama.feed_forward_length": np.uint32(FFN),
        "llama.attention.head_count": np.uint32(HEADS),
        "llama.attention.head_count_kv": np.uint32(KV_HEADS),
        "llama.rope.freq_base": np.float32(10000.0),
        "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray(scores, np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
        "tokenizer.ggml.bos_token_id": np.uint32(1),
        "tokenizer.ggml.eos_token_id": np.uint32(2),
    }
    meta.update(overrides or {})
    out = []
    for key, value in meta.items():
        if key in drop:
            continue
        out.append(value if isinstance(value, RawKV) else encode_kv(key, value))
    return out


def base_tensors(seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (GGML type, float32 values in PyTorch order); quantized on writing."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocab()[0])
    head_dim = HIDDEN // HEADS

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.05, shape).astype(np.float32)

    t: dict[str, tuple[str, np.ndarray]] = {
        "token_embd.weight": ("F16", w(n_vocab, HIDDEN)),
        "output_norm.weight": ("F32", np.ones(HIDDEN, np.float32)),
    }
    for i in range(LAYERS):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = ("F32", np.ones(HIDDEN, np.float32))
        t[p + "attn_q.weight"] = ("Q4_1", w(HIDDEN, HIDDEN))
        t[p + "attn_k.weight"] = ("Q4_1", w(KV_HEADS * head_dim, HIDDEN))
        t[p + "attn_v.weight"] = ("Q8_0", w(KV_HEADS * head_dim, HIDDEN))
        t[p + "attn_output.weight"] = ("Q8_0", w(HIDDEN, HIDDEN))
        t[p + "ffn_norm.weight"] = ("F32", np.ones(HIDDEN, np.float32))
        t[p + "ffn_gate.weight"] = ("F16", w(FFN, HIDDEN))
        t[p + "ffn_up.weight"] = ("F16", w(FFN, HIDDEN))
        t[p + "ffn_down.weight"] = ("Q4_K", w(HIDDEN, FFN))
    return t


def encode_tensor(ggml_type: str, values: np.ndarray) -> np.ndarray:
    if ggml_type == "F32":
        return values.astype(np.float32).view(np.uint8).ravel()
    if ggml_type == "F16":
        return values.astype(np.float16).view(np.uint8).ravel()
    if ggml_type in ("I32", "I16", "I8"):
        return values.view(np.uint8).ravel()
    return np.asarray(quantize(values.astype(np.float32), ggml_type)).view(np.uint8).ravel()


def write_model(
    path: Path,
    kv: list[RawKV] | None = None,
    tensors: dict[str, tuple[str, np.ndarray]] | None = None,
    patch: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> Path:
    """Write a GGUF; patch(encoded) may change the encoded bytes of tensors before writing."""
    tensors = base_tensors() if tensors is None else tensors
    encoded = {name: encode_tensor(gt, v) for name, (gt, v) in tensors.items()}
    if patch is not None:
        patch(encoded)
    specs = [(TensorSpec(name, v.shape, gt), encoded[name]) for name, (gt, v) in tensors.items()]
    write_gguf(path, base_kv() if kv is None else kv, specs)
    return path


def raw_kv(key: bytes, vtype: int, value: bytes) -> RawKV:
    """A pair with arbitrary key bytes (invalid UTF-8) and an already encoded value."""
    data = struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + value
    return RawKV(key.decode("utf-8", "surrogateescape"), vtype, data)


def string_array_kv(key: str, items: list[bytes]) -> RawKV:
    body = b"".join(struct.pack("<Q", len(b)) + b for b in items)
    return raw_kv(key.encode(), ARRAY, struct.pack("<IQ", STRING, len(items)) + body)


def nested_array_kv(key: str, rows: list[list[str]]) -> RawKV:
    """An ARRAY of ARRAYs of strings (tokens or merges as arrays of arrays)."""
    body = b""
    for row in rows:
        strings = b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in row)
        body += struct.pack("<IQ", STRING, len(row)) + strings
    return raw_kv(key.encode(), ARRAY, struct.pack("<IQ", ARRAY, len(rows)) + body)


# ------------------------------------------------------------------ GGUF cases


def _tokens(mutate: Callable[[list[bytes]], None]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        items = [t.encode() for t in vocab()[0]]
        mutate(items)
        return write_model(path, base_kv({"tokenizer.ggml.tokens": string_array_kv(
            "tokenizer.ggml.tokens", items)}))  # fmt: skip

    return write


def _set(index: int, value: bytes) -> Callable[[list[bytes]], None]:
    return lambda items: items.__setitem__(index, value)


def tokens_nested(path: Path) -> Path:
    rows = [[t] for t in vocab()[0]]
    kv = nested_array_kv("tokenizer.ggml.tokens", rows)
    return write_model(path, base_kv({"tokenizer.ggml.tokens": kv}))


def merges_nested(path: Path) -> Path:
    """A byte-level BPE (gpt2) vocab whose merges are arrays of arrays."""
    tokens = ["a", "b", "ab", "<|endoftext|>"] + [f"t{i}" for i in range(296)]
    kv = base_kv(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.asarray([1] * 300, np.int32),
            "tokenizer.ggml.merges": nested_array_kv("tokenizer.ggml.merges", [["a", "b"]]),
        },
        drop=("tokenizer.ggml.scores",),
    )
    return write_model(path, kv)


def tokens_scalar(path: Path) -> Path:
    return write_model(path, base_kv({"tokenizer.ggml.tokens": np.uint32(7)}))


def _template(source: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        return write_model(path, base_kv({"tokenizer.chat_template": source}))

    return write


TEMPLATES = {
    "chat-template-range": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "chat-template-nested": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "chat-template-pow": "{{ 7 ** 2000000000 }}",
    "chat-template-repeat": "{{ 'abc' * 4000000000 }}",
    "chat-template-width": "{{ 'a'.rjust(4000000000) }}",
    "chat-template-recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


def key_invalid_utf8(path: Path) -> Path:
    odd = raw_kv(b"general.\xff\xfename", STRING, struct.pack("<Q", 3) + b"abc")
    return write_model(path, base_kv() + [odd])


def value_invalid_utf8(path: Path) -> Path:
    odd = raw_kv(b"general.description", STRING, struct.pack("<Q", 3) + b"a\xffc")
    return write_model(path, base_kv() + [odd])


def _nan_in_scale(ggml_type: str, name: str, offset: int) -> Callable[[Path], Path]:
    """One block's F16 scale (d at byte `offset` of block 0) set to NaN."""

    def write(path: Path) -> Path:
        tensors = base_tensors()
        tensors[name] = (ggml_type, tensors[name][1])

        def patch(encoded: dict[str, np.ndarray]) -> None:
            encoded[name][offset : offset + 2] = np.frombuffer(
                np.float16(np.nan).tobytes(), np.uint8
            )

        return write_model(path, tensors=tensors, patch=patch)

    return write


def nan_embedding(path: Path) -> Path:
    tensors = base_tensors()
    values = tensors["token_embd.weight"][1].copy()
    values[5:, 3] = np.nan  # every token but the first five
    tensors["token_embd.weight"] = ("F32", values)
    return write_model(path, tensors=tensors)


def inf_norm(path: Path) -> Path:
    tensors = base_tensors()
    values = np.ones(HIDDEN, np.float32)
    values[7] = np.inf
    tensors["blk.1.ffn_norm.weight"] = ("F32", values)
    return write_model(path, tensors=tensors)


def int_norm(path: Path) -> Path:
    tensors = base_tensors()
    tensors["output_norm.weight"] = ("I32", np.ones(HIDDEN, np.int32))
    return write_model(path, tensors=tensors)


def alignment_u64(path: Path) -> Path:
    """Valid for the reader (general.alignment as UINT64 64): quantize must honour it."""
    kv = base_kv({"general.alignment": encode_kv("general.alignment", np.uint64(64), UINT64)})
    return write_model(path, kv)


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "tokens-nested": (tokens_nested, "run"),
    "merges-nested": (merges_nested, "run"),
    "tokens-scalar": (tokens_scalar, "run"),
    "tokens-scalar-inspect": (tokens_scalar, "inspect-ok"),
    "token-invalid-utf8": (_tokens(_set(280, b"\xc3\x28bad")), "run"),
    "byte-token-not-hex": (_tokens(_set(3 + 0x41, b"<0xZZ>")), "run"),
    "byte-token-other-text": (_tokens(_set(3 + 0x41, b"A")), "run"),
    **{name: (_template(source), "run") for name, source in TEMPLATES.items()},
    "key-invalid-utf8": (key_invalid_utf8, "inspect-ok"),
    "value-invalid-utf8": (value_invalid_utf8, "inspect-ok"),
    "nan-scale-q4_1": (_nan_in_scale("Q4_1", "blk.0.attn_q.weight", 0), "run"),
    "nan-scale-q4_k": (_nan_in_scale("Q4_K", "blk.1.ffn_down.weight", 144 * 5), "run"),
    # the packed Q8_0 kernel does not carry a NaN scale into the logits: only the scan sees it
    "nan-scale-q8_0": (_nan_in_scale("Q8_0", "blk.0.attn_v.weight", 34 * 3), "run-check"),
    "nan-scale-q4_1-check": (_nan_in_scale("Q4_1", "blk.0.attn_q.weight", 0), "run-check"),
    "nan-embedding": (nan_embedding, "run"),
    "inf-norm": (inf_norm, "run"),
    "int-norm": (int_norm, "run"),
}


# ------------------------------------------------------------------ Hugging Face folder cases

HF_SHAPES = {
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
}
HF_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 16,
    "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
}  # fmt: skip
DEEP = "[" * 200_000 + "]" * 200_000  # RecursionError in json.loads


def safetensors_bytes(entries: dict[str, tuple[Any, list[int], bytes]]) -> bytes:
    """A .safetensors file; dtype may be anything JSON can hold (hostile headers)."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def hf_entries() -> dict[str, tuple[Any, list[int], bytes]]:
    rng = np.random.default_rng(0)
    return {
        n: ("F16", list(s), rng.standard_normal(s).astype(np.float16).tobytes())
        for n, s in HF_SHAPES.items()
    }


def hf_entries_of(folder: Path) -> dict[str, tuple[Any, list[int], bytes]]:
    """The entries of folder/model.safetensors, to change and write back (safetensors_bytes)."""
    data = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    return {
        name: (e["dtype"], e["shape"], body[e["data_offsets"][0] : e["data_offsets"][1]])
        for name, e in header.items()
        if name != "__metadata__"
    }


def hf_folder(folder: Path, entries: dict | None = None, config: dict | str | None = None) -> Path:
    """A tiny llama folder: config.json and model.safetensors (no tokenizer: these cases fail
    before one is needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(safetensors_bytes(entries or hf_entries()))
    text = config if isinstance(config, str) else json.dumps(config or HF_CONFIG)
    (folder / "config.json").write_text(text)
    return folder


def hf_model_folder(folder: Path) -> Path:
    """A runnable llama folder (hidden 64, 1 layer, a 260-token byte-level BPE tokenizer.json):
    the seed of the HF-folder fuzzer."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import BPE

    dims = {8: 64, 4: 32, 12: 128, 16: 260}  # the tiny shapes scaled to what kernels run
    rng = np.random.default_rng(1)
    entries = {}
    for name, shape in HF_SHAPES.items():
        shape = tuple(dims[d] for d in shape)
        entries[name] = ("F32", list(shape), (rng.standard_normal(shape) * 0.05 + (
            1 if name.endswith("norm.weight") else 0)).astype(np.float32).tobytes())  # fmt: skip
    config = dict(HF_CONFIG, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=260)  # fmt: skip
    hf_folder(folder, entries, config)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["Ġh"] = len(vocab)
    backend = RustTokenizer(BPE(vocab=vocab, merges=[("Ġ", "h")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|begin|>", "<|eot_id|>", "<|end|>"])
    backend.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": "<|begin|>",
        "eos_token": "<|eot_id|>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def _sharded(folder: Path, weight_map: Any) -> Path:
    hf_folder(folder)
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def hf_dtype_list(folder: Path) -> Path:
    entries = hf_entries()
    name = "model.norm.weight"
    entries[name] = (["F16"], *entries[name][1:])
    return hf_folder(folder, entries)


def hf_i16_matrix(folder: Path) -> Path:
    entries = hf_entries()
    name = "model.layers.0.self_attn.q_proj.weight"
    entries[name] = ("I16", *entries[name][1:])
    return hf_folder(folder, entries)


def hf_escape(folder: Path) -> Path:
    """index.json names ../other/x.safetensors, a valid file outside the model folder."""
    other = folder.parent / "other"
    other.mkdir(parents=True, exist_ok=True)
    (other / "x.safetensors").write_bytes(safetensors_bytes(hf_entries()))
    weight_map = {n: "../other/x.safetensors" for n in HF_SHAPES}
    _sharded(folder, weight_map)
    (folder / "model.safetensors").unlink()
    return folder


def hf_symlink_escape(folder: Path) -> Path:
    """model.safetensors is a symlink to a file outside the folder."""
    hf_escape(folder)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model.safetensors").symlink_to(folder.parent / "other" / "x.safetensors")
    return folder


def hf_config_symlink(folder: Path) -> Path:
    hf_folder(folder)
    secret = folder.parent / "secret.json"
    secret.write_text('{"model_type": "llama"}')
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(secret)
    return folder


def _write_file(name: str, text: str, base: Callable[[Path], Path] = hf_folder):
    def write(folder: Path) -> Path:
        base(folder)
        (folder / name).write_text(text)
        return folder

    return write


HF_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "hf-dtype-list": (hf_dtype_list, "inspect"),
    "hf-weight-map-int": (lambda f: _sharded(f, {n: 5 for n in HF_SHAPES}), "inspect"),
    "hf-weight-map-list": (lambda f: _sharded(f, {n: ["a"] for n in HF_SHAPES}), "inspect"),
    "hf-weight-map-list-type": (lambda f: _sharded(f, ["model.safetensors"]), "inspect"),
    "hf-index-deep": (_write_file("model.safetensors.index.json", DEEP), "inspect"),
    "hf-config-deep": (_write_file("config.json", DEEP), "inspect"),
    "hf-config-deep-object": (_write_file("config.json", '{"a": ' + DEEP + "}"), "inspect"),
    "hf-tokenizer-config-deep": (_write_file("tokenizer_config.json", DEEP), "inspect"),
    "hf-header-deep": (
        lambda f: (
            hf_folder(f)
            and (f / "model.safetensors").write_bytes(struct.pack("<Q", len(DEEP)) + DEEP.encode())
            and f
        ),
        "inspect",
    ),  # fmt: skip
    "hf-index-escape": (hf_escape, "inspect"),
    "hf-symlink-escape": (hf_symlink_escape, "inspect"),
    "hf-config-symlink": (hf_config_symlink, "inspect"),
    "hf-i16-matrix": (hf_i16_matrix, "run"),
}
CASES.update(HF_CASES)


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write(out / (name if name.startswith("hf-") else f"{name}.gguf"))
        for name, (write, _) in CASES.items()
    ]
    written.append(alignment_u64(out / "alignment-u64.gguf"))
    written.append(write_model(out / "base.gguf"))
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/warmload-hostile")):
        print(p)
