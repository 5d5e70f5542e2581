"""Hugging Face tokenizer.json (+ tokenizer_config.json) <-> warmload Tokenizer.

Reading: the `tokenizers` library loads tokenizer.json as it is (its normalizer, pre-tokenizer
and model run unchanged, so ids are those of transformers' fast tokenizer); what the codec
needs besides (token texts and llama.cpp-style attributes for pieces, BOS/EOS and the
end-of-generation set) is resolved here as llama.cpp's convert_hf_to_gguf.py and
transformers' PreTrainedTokenizerFast see it:

- added tokens with special=True are control tokens, other added tokens user-defined;
  "<0xXX>" tokens of a byte-fallback model are byte tokens; the model's unk_token is unknown;
- "llama" (SentencePiece-style: pieces use "▁" for spaces) unless the decoder or the
  pre-tokenizer is byte-level ("gpt2"); add_space_prefix from a Prepend("▁") normalizer or a
  Metaspace pre-tokenizer that prepends;
- BOS/EOS from tokenizer_config's bos_token/eos_token (else config.json ids); add_bos/add_eos
  from tokenizer_config's flags, else from the post-processor's template (Llama 3 has no flag);
- the end-of-generation set: llama.cpp's text rules (vocab.py) plus every eos_token_id of
  config.json and generation_config.json (Llama 3.1 lists three).

Writing (tokenizer_json): a GGUF vocab's backend (backend.py) with the decoder and BOS/EOS
post-processor transformers expects, for scripts/export_hf.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, processors

from warmload.errors import TokenizerError
from warmload.tokenizer.codec import Tokenizer
from warmload.tokenizer.vocab import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_LSTRIP,
    ATTR_NORMAL,
    ATTR_RSTRIP,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    Vocab,
    _resolve_text_specials,
)

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _state(component: Any) -> Any:
    """The JSON of a tokenizers component (normalizer, pre-tokenizer, ...), or None."""
    if component is None:
        return None
    return json.loads(component.__getstate__())


def _types(state: Any) -> set[str]:
    """Every "type" named anywhere in a component's JSON (Sequence members included)."""
    found: set[str] = set()
    if isinstance(state, dict):
        if isinstance(state.get("type"), str):
            found.add(state["type"])
        for value in state.values():
            found |= _types(value)
    elif isinstance(state, list):
        for value in state:
            found |= _types(value)
    return found


def _prepends_space(normalizer: Any, pre_tokenizer: Any) -> bool:
    text = json.dumps([normalizer, pre_tokenizer])
    if '"Prepend"' in text and '"prepend": "\\u2581"' in text:
        return True
    if "Metaspace" not in _types(pre_tokenizer):
        return False
    return '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text


def _token_text(value: Any) -> str | None:
    """tokenizer_config's bos_token/eos_token: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _template_specials(post: Any) -> tuple[int | None, int | None]:
    """(first, last) special token ids a TemplateProcessing adds around a single sequence."""
    if not isinstance(post, dict):
        return None, None
    if post.get("type") == "Sequence":
        for p in post.get("processors", []):
            found = _template_specials(p)
            if found != (None, None):
                return found
        return None, None
    if post.get("type") != "TemplateProcessing":
        return None, None
    single = post.get("single", [])
    ids = {k: v["ids"][0] for k, v in post.get("special_tokens", {}).items() if v.get("ids")}

    def special(item: Any) -> int | None:
        token = item.get("SpecialToken") if isinstance(item, dict) else None
        return ids.get(token["id"]) if token else None

    first = special(single[0]) if single else None
    last = special(single[-1]) if len(single) > 1 else None
    return first, last


def _tokens(backend: RustTokenizer, n_model: int) -> list[str]:
    """Token texts by id, padded to the model's vocab size with [PAD_i] (rendered as nothing)."""
    vocab = backend.get_vocab(with_added_tokens=True)
    n = max(max(vocab.values()) + 1, n_model)
    tokens: list[str | None] = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    return [t if t is not None else f"[PAD_{i}]" for i, t in enumerate(tokens)]


def _attrs(backend: RustTokenizer, tokens: list[str], byte_fallback: bool) -> np.ndarray:
    padded = {t for t in tokens if t.startswith("[PAD_")} - set(backend.get_vocab())
    attrs = np.array([0 if t in padded else ATTR_NORMAL for t in tokens], dtype=np.int32)
    if byte_fallback:
        for i, t in enumerate(tokens):
            if len(t) == 6 and _BYTE_TOKEN.fullmatch(t):
                attrs[i] = ATTR_BYTE
    for i, added in backend.get_added_tokens_decoder().items():
        attr = ATTR_CONTROL if added.special else ATTR_USER_DEFINED
        attrs[i] = (
            attr | (ATTR_LSTRIP if added.lstrip else 0) | (ATTR_RSTRIP if added.rstrip else 0)
        )
    unk = getattr(backend.model, "unk_token", None)
    if unk is not None and backend.token_to_id(unk) is not None:
        attrs[backend.token_to_id(unk)] = ATTR_UNKNOWN
    return attrs


def read_hf_vocab(backend: RustTokenizer, metadata: dict[str, Any]) -> Vocab:
    """The Vocab of a tokenizer.json backend and the folder's configs (see the docstring)."""
    config = metadata.get("config") or {}
    tok_config = metadata.get("tokenizer_config") or {}
    gen_config = metadata.get("generation_config") or {}
    normalizer, pre = _state(backend.normalizer), _state(backend.pre_tokenizer)
    byte_level = "ByteLevel" in _types(_state(backend.decoder)) | _types(pre)
    byte_fallback = bool(getattr(backend.model, "byte_fallback", False))
    n_model = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else 0
    tokens = _tokens(backend, n_model)
    vocab = Vocab(
        model="gpt2" if byte_level else "llama",
        pre=None,
        tokens=tokens,
        index={t: i for i, t in enumerate(tokens)},
        attrs=_attrs(backend, tokens, byte_fallback),
        scores=None,
        merges=None,
        add_space_prefix=not byte_level and _prepends_space(normalizer, pre),
    )
    first, last = _template_specials(_state(backend.post_processor))

    def token_id(key: str, config_key: str) -> int | None:
        text = _token_text(tok_config.get(key))
        if text is not None and backend.token_to_id(text) is not None:
            return backend.token_to_id(text)
        found = _ids(config.get(config_key))
        return found[0] if found else None

    vocab.bos_id = token_id("bos_token", "bos_token_id")
    vocab.eos_id = token_id("eos_token", "eos_token_id")
    vocab.pad_id = token_id("pad_token", "pad_token_id")
    unk = getattr(backend.model, "unk_token", None) or _token_text(tok_config.get("unk_token"))
    vocab.unk_id = backend.token_to_id(unk) if unk is not None else None
    add_bos, add_eos = tok_config.get("add_bos_token"), tok_config.get("add_eos_token")
    vocab.add_bos = add_bos if isinstance(add_bos, bool) else first is not None
    vocab.add_eos = add_eos if isinstance(add_eos, bool) else last is not None
    if first is not None and vocab.bos_id is None:
        vocab.bos_id = first
    _resolve_text_specials(vocab)
    extra = {i for i in _ids(config.get("eos_token_id")) + _ids(gen_config.get("eos_token_id"))}
    vocab.eog_ids = vocab.eog_ids | {i for i in extra if 0 <= i < vocab.n_tokens}
    return vocab


def build_hf_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """A Tokenizer from a model folder's metadata (formats/hf_folder.py: "hf.tokenizer_json")."""
    path = metadata.get("hf.tokenizer_json")
    if not path:
        raise TokenizerError("the model folder has no tokenizer.json")
    try:
        backend = RustTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for bad JSON / unknown parts
        raise TokenizerError(
            f"{path}: not a tokenizer.json the tokenizers library reads ({e})"
        ) from None
    return Tokenizer(read_hf_vocab(backend, metadata), backend, metadata)


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """tokenizer.json text for a GGUF-built Tokenizer: its backend (a copy) plus the decoder and
    the BOS/EOS post-processor that transformers' fast tokenizers carry."""
    backend = RustTokenizer.from_str(tokenizer._backend.to_str())
    if tokenizer.model == "gpt2":
        backend.decoder = decoders.ByteLevel()
    else:
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if tokenizer.add_space_prefix:
            steps.append(decoders.Strip(" ", 1, 0))
        backend.decoder = decoders.Sequence(steps)
    specials, single = [], "$A"
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        specials.append((tokenizer.bos_token, tokenizer.bos_id))
        single = f"{tokenizer.bos_token} {single}"
    if tokenizer.add_eos and tokenizer.eos_id is not None:
        specials.append((tokenizer.eos_token, tokenizer.eos_id))
        single = f"{single} {tokenizer.eos_token}"
    if specials:
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=f"{single} $B:1", special_tokens=specials
        )
    return backend.to_str()


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json content for a GGUF-built Tokenizer (texts, flags, template)."""
    vocab = tokenizer.vocab
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token or None,
        "eos_token": tokenizer.eos_token or None,
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": tokenizer.add_eos,
        "clean_up_tokenization_spaces": False,
    }
    for key, token_id in (("unk_token", vocab.unk_id), ("pad_token", vocab.pad_id)):
        if token_id is not None:
            config[key] = vocab.tokens[token_id]
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    return config


def write_tokenizer_files(tokenizer: Tokenizer, folder: str | Path) -> None:
    """tokenizer.json and tokenizer_config.json of `tokenizer` into `folder`, atomically."""
    folder = Path(folder)
    for name, text in (
        ("tokenizer.json", tokenizer_json(tokenizer)),
        ("tokenizer_config.json", json.dumps(tokenizer_config(tokenizer), indent=2)),
    ):
        tmp = folder / (name + ".tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(folder / name)
