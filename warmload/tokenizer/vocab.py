"""GGUF tokenizer metadata -> Vocab: tokens, per-token attributes, special ids, EOG set, flags.

Follows llama.cpp's `llama_vocab::impl::load` (src/llama-vocab.cpp): the defaults per tokenizer
model, the metadata overrides, the token-type -> attribute mapping and the text-based fix-ups
(EOT/EOM/FIM detection, end-of-generation tokens promoted to control, the gpt-oss and
gemma4/plamo exceptions). Tokenization itself happens in backend.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmload.errors import TokenizerError, UnsupportedError
from warmload.tokenizer.pretokenize import PreTokenizer, find_pre_tokenizer

# llama_token_attr bits (llama.h).
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# tokenizer.ggml.token_type values (gguf TokenType) -> attribute bits; anything else: undefined (0).
TYPE_TO_ATTR = {
    1: ATTR_NORMAL,
    2: ATTR_UNKNOWN,
    3: ATTR_CONTROL,
    4: ATTR_USER_DEFINED,
    5: ATTR_UNUSED,
    6: ATTR_BYTE,
}

# Tokens whose text marks them as end-of-turn/end-of-generation (llama.cpp's lists, by text).
EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)  # fmt: skip
EOM_TEXTS = ("<|eom_id|>",)
FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
FIM_SEP_TEXTS = ("<|file_sep|>",)
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)  # fmt: skip
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

# metadata key suffix -> Vocab field, in llama.cpp's order (later keys win for the FIM ids).
SPECIAL_ID_KEYS = (
    ("bos_token_id", "bos_id"),
    ("eos_token_id", "eos_id"),
    ("eot_token_id", "eot_id"),
    ("eom_token_id", "eom_id"),
    ("unknown_token_id", "unk_id"),
    ("seperator_token_id", "sep_id"),
    ("padding_token_id", "pad_id"),
    ("mask_token_id", "mask_id"),
    ("fim_pad_token_id", "fim_pad_id"),
    ("fim_rep_token_id", "fim_rep_id"),
    ("fim_sep_token_id", "fim_sep_id"),
)

SUPPORTED_MODELS = ("gpt2", "llama")


@dataclass(slots=True)
class Vocab:
    """Everything the tokenizer needs, resolved exactly as llama.cpp resolves it."""

    model: str  # "llama" (SentencePiece BPE with scores) | "gpt2" (byte-level BPE)
    pre: PreTokenizer | None  # gpt2 only
    tokens: list[str]
    index: dict[str, int]  # text -> id (last id of a duplicate text, as llama.cpp); building only
    attrs: np.ndarray  # int32 llama_token_attr bits per token
    scores: np.ndarray | None  # float32, llama only
    merges: list[str] | None  # gpt2 only: "left right" strings in rank order
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    fim_pad_id: int | None = None
    fim_rep_id: int | None = None
    fim_sep_id: int | None = None
    eog_ids: frozenset[int] = frozenset()

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def _key(metadata: dict[str, Any], name: str) -> Any:
    return metadata.get(f"tokenizer.ggml.{name}")


def _check_strings(items: list[Any], name: str) -> None:
    """Every item a str of valid UTF-8 (GGUF strings are decoded with surrogateescape, so
    invalid bytes show up as lone surrogates); the error names the first bad item."""
    if set(map(type, items)) != {str}:
        i = next(i for i, t in enumerate(items) if type(t) is not str)
        raise TokenizerError(
            f"'tokenizer.ggml.{name}' must be an array of strings, but item {i} is a "
            f"{type(items[i]).__name__} ({str(items[i])[:60]!r})"
        )
    try:
        "".join(items).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, t in enumerate(items) if not t.isascii() and _bad_utf8(t))
        raw = items[i].encode("utf-8", "surrogateescape")
        raise TokenizerError(
            f"item {i} of 'tokenizer.ggml.{name}' is not valid UTF-8 ({raw[:60]!r}); the "
            "file's vocabulary is corrupt"
        ) from None


def _bad_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_tokens(metadata: dict[str, Any]) -> list[str]:
    tokens = _key(metadata, "tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(
            "GGUF metadata has no 'tokenizer.ggml.tokens' string array (not a model with a vocab?)"
        )
    _check_strings(tokens, "tokens")
    if "" not in tokens:
        return tokens
    # llama.cpp renames empty tokens so that every text maps to one id
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]


def _read_array(metadata: dict[str, Any], name: str, n: int, dtype: type) -> np.ndarray | None:
    value = _key(metadata, name)
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged arrays of arrays
        array = np.asarray([], dtype=object)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise TokenizerError(f"'tokenizer.ggml.{name}' must be a numeric array, not {array.dtype}")
    if len(array) < n:
        raise TokenizerError(
            f"'tokenizer.ggml.{name}' has {len(array)} entries but the vocab has {n} tokens"
        )
    return array[:n].astype(dtype, copy=False)


def _attrs_from_types(types: np.ndarray | None, n: int) -> np.ndarray:
    if types is None:
        return np.full(n, ATTR_NORMAL, dtype=np.int32)
    lut = np.zeros(8, dtype=np.int32)
    for token_type, attr in TYPE_TO_ATTR.items():
        lut[token_type] = attr
    clipped = np.where((types >= 0) & (types < len(lut)), types, 0)
    return lut[clipped]


def _model_defaults(model: str, pre: PreTokenizer | None) -> dict[str, Any]:
    if model == "llama":
        return dict(bos_id=1, eos_id=2, unk_id=0, add_bos=True, add_space_prefix=True)
    assert pre is not None
    # chatglm/glm4: llama.cpp clears the default BOS (the file's bos_token_id still counts)
    return dict(bos_id=None if pre.no_bos else 11, eos_id=11, add_bos=pre.add_bos)


def read_vocab(metadata: dict[str, Any]) -> Vocab:
    """Resolve the tokenizer of a GGUF metadata dict the way llama.cpp's vocab loader does."""
    model = _key(metadata, "model")
    if model not in SUPPORTED_MODELS:
        raise UnsupportedError(
            f"tokenizer model {model!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)})"
        )
    pre = find_pre_tokenizer(_key(metadata, "pre") or "default") if model == "gpt2" else None
    tokens = _read_tokens(metadata)
    n = len(tokens)
    types = _read_array(metadata, "token_type", n, np.int32)
    scores = _read_array(metadata, "scores", n, np.float32) if model == "llama" else None
    merges = None
    if model == "gpt2":
        merges = _key(metadata, "merges")
        if not isinstance(merges, list):
            raise TokenizerError("byte-level BPE vocab without a 'tokenizer.ggml.merges' array")
        if merges:
            _check_strings(merges, "merges")
    defaults = _model_defaults(model, pre)
    vocab = Vocab(
        model=model,
        pre=pre,
        tokens=tokens,
        index={t: i for i, t in enumerate(tokens)},
        attrs=_attrs_from_types(types, n).copy(),
        scores=scores,
        merges=merges,
        add_bos=defaults["add_bos"],
        add_space_prefix=defaults.get("add_space_prefix", False),
    )
    _check_byte_tokens(vocab)
    _resolve_special_ids(vocab, metadata, defaults)
    for name, field in (("add_bos_token", "add_bos"), ("add_eos_token", "add_eos")):
        if isinstance(_key(metadata, name), bool):
            setattr(vocab, field, _key(metadata, name))
    if isinstance(_key(metadata, "add_space_prefix"), bool):
        vocab.add_space_prefix = _key(metadata, "add_space_prefix")
    _resolve_text_specials(vocab)
    _apply_strip_attrs(vocab, metadata)
    return vocab


_BYTE_TEXT = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _check_byte_tokens(vocab: Vocab) -> None:
    """A BYTE token's text must be <0xXX>: the decoder reads its byte from it."""
    for i in np.flatnonzero(vocab.attrs & ATTR_BYTE).tolist():
        if not _BYTE_TEXT.fullmatch(vocab.tokens[i]):
            raise TokenizerError(
                f"token {i} has type BYTE but its text is {vocab.tokens[i][:40]!r}, not <0xXX>; "
                "the file's 'tokenizer.ggml.token_type' or tokens are corrupt"
            )


def _resolve_special_ids(vocab: Vocab, metadata: dict[str, Any], defaults: dict) -> None:
    n = vocab.n_tokens
    for field in ("bos_id", "eos_id", "unk_id"):
        default = defaults.get(field)
        setattr(vocab, field, default if default is not None and default < n else None)
    for key, field in SPECIAL_ID_KEYS:
        value = _key(metadata, key)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < n:
            setattr(vocab, field, int(value))


def _first_id(index: dict[str, int], texts: tuple[str, ...]) -> int | None:
    found = [index[t] for t in texts if t in index]
    return min(found) if found else None


def _resolve_text_specials(vocab: Vocab) -> None:
    """EOT/EOM/FIM detection by text and the EOG set, as llama.cpp (ids in ascending order)."""
    index, attrs = vocab.index, vocab.attrs
    promoted: list[int] = []
    for field, texts in (
        ("eot_id", EOT_TEXTS),
        ("eom_id", EOM_TEXTS),
        ("fim_pad_id", FIM_PAD_TEXTS),
        ("fim_rep_id", FIM_REP_TEXTS),
        ("fim_sep_id", FIM_SEP_TEXTS),
    ):
        if getattr(vocab, field) is None:
            found = _first_id(index, texts)
            if found is not None:
                setattr(vocab, field, found)
                promoted.append(found)
    eog = {i for i in (vocab.fim_pad_id, vocab.fim_rep_id, vocab.fim_sep_id) if i is not None}
    for text in EOG_TEXTS:
        if text in index:
            eog.add(index[text])
            promoted.append(index[text])
    for i in promoted:
        attrs[i] |= ATTR_CONTROL
    for text in ALWAYS_RENDERED_TEXTS:
        if text in index:
            attrs[index[text]] = ATTR_USER_DEFINED
    eog |= {i for i in (vocab.eos_id, vocab.eot_id, vocab.eom_id) if i is not None}
    _apply_eog_exceptions(vocab, eog)
    vocab.eog_ids = frozenset(eog)


def _apply_eog_exceptions(vocab: Vocab, eog: set[int]) -> None:
    index = vocab.index
    texts = {vocab.tokens[i] for i in eog}
    # o200k_harmony / solar-open: "<|end|>" ends a message, not the generation
    end_id = index.get("<|end|>")
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if end_id in eog and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        eog.discard(end_id)
        vocab.attrs[end_id] = ATTR_USER_DEFINED
    # gemma4 and plamo have an ordinary "</s>" token
    s_id = index.get("</s>")
    if s_id in eog and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(s_id)
        vocab.attrs[s_id] = ATTR_NORMAL


def _apply_strip_attrs(vocab: Vocab, metadata: dict[str, Any]) -> None:
    """Per-model lstrip/rstrip of special tokens, set by name in llama.cpp (not in the file)."""
    name = str(metadata.get("general.name", "")).lower()
    arch = str(metadata.get("general.architecture", ""))
    pre = str(_key(metadata, "pre") or "")
    index, attrs = vocab.index, vocab.attrs
    if pre in ("jina-v2-de", "jina-v2-es", "jina-v2-code") or arch in (
        "nomic-bert-moe",
        "jina-bert-v3",
    ):
        if "<mask>" in index:
            attrs[index["<mask>"]] |= ATTR_LSTRIP
    elif "phi-3" in name or "phi3" in name:
        special = (attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) != 0
        attrs[special] |= ATTR_RSTRIP
        for text, on in (
            ("</s>", True),
            ("<unk>", False),
            ("<s>", False),
            ("<|endoftext|>", False),
        ):
            if text in index:
                attrs[index[text]] = (
                    attrs[index[text]] | ATTR_RSTRIP if on else attrs[index[text]] & ~ATTR_RSTRIP
                )
