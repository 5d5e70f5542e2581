"""A Hugging Face tokenizer folder -> GGUF `tokenizer.*` metadata, as llama.cpp expects it.

Reference: llama.cpp convert_hf_to_gguf.py (TextModel.get_vocab_base, _set_vocab_gpt2,
get_vocab_base_pre) and gguf-py/gguf/vocab.py (SpecialVocab: special token ids, add_bos/add_eos,
merges, chat template). Byte-level BPE tokenizers (tokenizer.json with a BPE model and a
ByteLevel pre-tokenizer: Llama 3, SmolLM, Qwen, GPT-2 ...) become `gpt2` vocabs with merges;
SentencePiece ones (Llama 2, Gemma) are read from tokenizer.model (its protobuf pieces: text,
score, type) and become `llama` vocabs with scores, as _set_vocab_sentencepiece does.

llama.cpp recognises the pre-tokenizer by hashing the ids of a probe text; here each
`tokenizer.ggml.pre` that warmload knows is tried on a probe text instead, and the first whose
splits equal tokenizer.json's own pre-tokenizer's is written. The finished vocab is then checked
end to end: warmload's tokenizer built from the new metadata must give tokenizer.json's ids.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from warmload.errors import CheckpointError, TokenizerError, UnsupportedError
from warmload.formats.hf_folder import inside_folder, read_json

# gguf-py TokenType
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# One name per distinct regex set of warmload.tokenizer.pretokenize, most common first.
PRE_CANDIDATES = ("llama-bpe", "smollm", "gpt-2", "qwen2", "gpt-4o", "deepseek-v3",
                  "deepseek-llm", "tekken", "falcon", "default", "poro-chat", "viking",
                  "bailingmoe", "seed-coder", "qwen35", "tiny_aya")  # fmt: skip
PROBE_TEXT = (
    "Hello world! It's 2024, I've got 1234567 apples & 3.14 pears.\n\n  Indented  text\t"
    "tab\r\nCRLF don't WE'LL y'all. Ünïcödé àccents, ελληνικά, русский, 中文字符, 日本語の"
    "テキスト, 한국어 🙂🚀 emoji. snake_case camelCase HTTPServer x=[1,2,3]; // code!!!   \n"
)
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                "pad": "padding_token_id", "sep": "seperator_token_id"}  # fmt: skip


def _read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing (the tokenizer is converted from it)")
        return None
    return read_json(inside_folder(path.parent, path.name, path.name))


def _merges(model: dict[str, Any]) -> list[str]:
    """tokenizer.json merges: "a b" strings, or [a, b] pairs (tokenizers >= 0.20)."""
    merges = model.get("merges", [])
    if not isinstance(merges, list):
        raise CheckpointError(f"tokenizer.json: model.merges must be a list, not {merges!r:.60}")
    out = []
    for m in merges:
        if isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            m = " ".join(m)
        if not isinstance(m, str):
            raise CheckpointError(
                f'tokenizer.json: a merge must be "a b" or [a, b] strings, not {m!r:.60}'
            )
        out.append(m)
    return out


def _tokens_and_types(tok: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """get_vocab_base: every id below vocab_size, added tokens typed CONTROL (special) or
    USER_DEFINED, holes filled with [PAD{i}] (UNUSED)."""
    reverse = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    reverse.update({i: a["content"] for i, a in added.items()})
    if reverse and max(reverse) >= vocab_size:
        raise CheckpointError(
            f"tokenizer.json has token id {max(reverse)} but the model's vocab_size is {vocab_size}"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            special = added[i].get("special", False)
            text = reverse[i] if special else reverse[i].replace("\u2581", " ")
            tokens.append(text)
            types.append(CONTROL if special else USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(NORMAL)
    return tokens, types


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_ids(
    tok: dict[str, Any], cfg: dict[str, Any], model_cfg: dict[str, Any], tokens: list[str]
) -> dict[str, int]:
    """SpecialVocab: ids of the tokens named in tokenizer_config.json, then config.json's
    `*_token_id` for the ones still missing."""
    index = {t: i for i, t in enumerate(tokens)}
    for a in tok.get("added_tokens", []):
        index[a["content"]] = a["id"]
    out: dict[str, int] = {}
    for typ, key in SPECIAL_KEYS.items():
        text = _token_text(cfg.get(f"{typ}_token"))
        if text is not None and text in index:
            out[key] = index[text]
            continue
        value = model_cfg.get(f"{typ}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < len(tokens):
            out[key] = value
    return out


def _add_special(tok: dict[str, Any], cfg: dict[str, Any]) -> dict[str, bool]:
    """add_bos/add_eos: the post-processor's template, overridden by tokenizer_config.json."""
    out: dict[str, bool] = {}
    post = tok.get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single", [])
            out["add_bos_token"] = bool(single) and "SpecialToken" in single[0]
            out["add_eos_token"] = len(single) > 1 and "SpecialToken" in single[-1]
    for typ in ("bos", "eos"):
        if isinstance(cfg.get(f"add_{typ}_token"), bool):
            out[f"add_{typ}_token"] = cfg[f"add_{typ}_token"]
    return out


def _chat_template(folder: Path, cfg: dict[str, Any]) -> str | None:
    """chat_template.jinja (transformers >= 4.43 saves it apart), else tokenizer_config's
    chat_template (a string, or a list of named templates: the "default" one)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return inside_folder(folder, jinja.name, "the chat template").read_text("utf-8", "replace")
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _pre_tokenizer_name(tokenizer_json: Path) -> str:
    """The first tokenizer.ggml.pre whose splits of PROBE_TEXT equal tokenizer.json's."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    from warmload.tokenizer.pretokenize import find_pre_tokenizer

    hf = Tokenizer.from_file(str(tokenizer_json))
    if hf.pre_tokenizer is None:
        raise UnsupportedError(f"{tokenizer_json}: no pre-tokenizer (not a byte-level BPE)")
    want = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(PROBE_TEXT)]
    for name in PRE_CANDIDATES:
        pre = find_pre_tokenizer(name)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        ours = pre_tokenizers.Sequence([*splits, byte_level]).pre_tokenize_str(PROBE_TEXT)
        if [p for p, _ in ours] == want:
            return name
    raise UnsupportedError(
        f"{tokenizer_json}: its pre-tokenizer splits text like none that llama.cpp knows "
        f"(tried {', '.join(PRE_CANDIDATES)})"
    )


def _check_model(tok: dict[str, Any], path: Path) -> None:
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedError(
            f"{path}: only byte-level BPE tokenizers (Llama 3, SmolLM, Qwen, GPT-2 style) are "
            f"converted from tokenizer.json (SentencePiece ones from tokenizer.model, which this "
            f"folder lacks); this one is {model.get('type')!r}"
            f"{' with byte_fallback (SentencePiece-style)' if model.get('byte_fallback') else ''}"
        )


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("tokenizer.model: truncated protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message: varints as ints, the rest as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((field, value))
            continue
        if wire == 2:
            n, pos = _varint(buf, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
        else:
            raise CheckpointError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        if pos + n > len(buf):
            raise CheckpointError("tokenizer.model: protobuf field runs past the end")
        out.append((field, buf[pos : pos + n]))
        pos += n
    return out


def sentencepiece_pieces(path: Path) -> list[tuple[str, float, int]]:
    """SentencePiece ModelProto.pieces (field 1): (piece, score, type) with sentencepiece's
    types (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6 = GGUF's)."""
    pieces = []
    for field, value in _fields(path.read_bytes()):
        if field != 1 or not isinstance(value, bytes):
            continue
        text, score, kind = "", 0.0, NORMAL
        for f, v in _fields(value):
            if f == 1 and isinstance(v, bytes):
                text = v.decode("utf-8")
            elif f == 2 and isinstance(v, bytes):
                score = struct.unpack("<f", v)[0]
            elif f == 3 and isinstance(v, int):
                kind = v
        pieces.append((text, score, kind))
    if not pieces:
        raise CheckpointError(f"{path}: no SentencePiece pieces (not a tokenizer.model?)")
    return pieces


def _sentencepiece_vocab(
    folder: Path, cfg: dict[str, Any], n_vocab: int
) -> tuple[list[str], list[float], list[int]]:
    """_create_vocab_sentencepiece: the pieces padded to n_vocab ([PAD{i}], -10000, UNUSED),
    then tokenizer_config.json's added_tokens_decoder as CONTROL (special) or USER_DEFINED."""
    pieces = sentencepiece_pieces(folder / "tokenizer.model")[:n_vocab]
    tokens = [p[0] for p in pieces] + [f"[PAD{i}]" for i in range(len(pieces), n_vocab)]
    scores = [p[1] for p in pieces] + [-10000.0] * (n_vocab - len(pieces))
    types = [p[2] for p in pieces] + [UNUSED] * (n_vocab - len(pieces))
    for key, added in (cfg.get("added_tokens_decoder") or {}).items():
        i, text = int(key), added.get("content", "")
        if i >= n_vocab:
            continue
        special = added.get("special", False)
        tokens[i] = text if special else text.replace("\u2581", " ")
        types[i], scores[i] = (CONTROL if special else USER_DEFINED), -1000.0
    return tokens, scores, types


def _sentencepiece_metadata(
    folder: Path, cfg: dict[str, Any], model_cfg: dict[str, Any]
) -> dict[str, Any]:
    pieces_n = len(sentencepiece_pieces(folder / "tokenizer.model"))
    n_vocab = int(model_cfg.get("vocab_size") or pieces_n)
    tokens, scores, types = _sentencepiece_vocab(folder, cfg, n_vocab)
    tok = _read_json(folder / "tokenizer.json", required=False) or {}
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
    }
    meta |= {f"tokenizer.ggml.{k}": v for k, v in _special_ids(tok, cfg, model_cfg, tokens).items()}
    meta |= {f"tokenizer.ggml.{k}": v for k, v in _add_special(tok, cfg).items()}
    return meta


def tokenizer_metadata(folder: Path, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """GGUF tokenizer.* metadata (key -> Python value) of a Hugging Face model folder."""
    cfg = _read_json(folder / "tokenizer_config.json", required=False) or {}
    if (folder / "tokenizer.model").is_file():
        meta = _sentencepiece_metadata(folder, cfg, model_cfg)
        template = _chat_template(folder, cfg)
        return meta | ({"tokenizer.chat_template": template} if template is not None else {})
    path = folder / "tokenizer.json"
    tok = _read_json(path)
    assert tok is not None
    _check_model(tok, path)
    n_vocab = max(len(tok["model"]["vocab"]), int(model_cfg.get("vocab_size") or 0))
    tokens, types = _tokens_and_types(tok, n_vocab)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_tokenizer_name(path),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": _merges(tok["model"]),
    }
    meta |= {f"tokenizer.ggml.{k}": v for k, v in _special_ids(tok, cfg, model_cfg, tokens).items()}
    meta |= {f"tokenizer.ggml.{k}": v for k, v in _add_special(tok, cfg).items()}
    template = _chat_template(folder, cfg)
    if template is not None:
        meta["tokenizer.chat_template"] = template
    _check_round_trip(path, meta)
    return meta


def _check_round_trip(tokenizer_json: Path, meta: dict[str, Any]) -> None:
    """warmload's tokenizer from the new metadata must encode PROBE_TEXT as tokenizer.json."""
    from tokenizers import Tokenizer

    from warmload.tokenizer import build_tokenizer

    want = Tokenizer.from_file(str(tokenizer_json)).encode(PROBE_TEXT, add_special_tokens=False)
    got = build_tokenizer(meta, use_cache=False).encode(PROBE_TEXT, add_special=False)
    if got != want.ids:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, want.ids, strict=False)) if a != b),
            min(len(got), len(want.ids)),
        )
        raise TokenizerError(
            f"{tokenizer_json}: the converted vocab encodes the probe text differently from "
            f"tokenizer.json (first difference at token {first}); not converting it"
        )
