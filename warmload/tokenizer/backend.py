"""Vocab -> a `tokenizers.Tokenizer` (Rust) that produces llama.cpp's token ids.

How each part of llama.cpp's `llama_vocab::impl::tokenize` (src/llama-vocab.cpp) maps:
- `tokenizer_st_partition` (control, unknown and user-defined tokens cut out of the text before
  anything else; control/unknown only with parse_special) -> added tokens, `normalized=False`;
  control/unknown ones are `special=True`, and parse_special=False is
  `Tokenizer.encode_special_tokens = True`, which leaves special matches as plain text while
  user-defined tokens are still cut out. llama.cpp cuts the longest tokens first over the whole
  text while tokenizers matches leftmost-longest: they differ only where two special tokens
  overlap in the text.
- SPM (`tokenizer.ggml.model == "llama"`): " " prepended to every text fragment when
  add_space_prefix (llama.cpp prefixes each fragment that follows a special token, or starts the
  text), then " " -> "▁", no pre-tokenization, BPE with merges from the scores (spm_merges.py)
  and byte fallback to <0xXX> tokens.
- BPE (`"gpt2"`): the pre-tokenizer's regexes as isolated splits, GPT-2 byte-to-unicode mapping,
  BPE with the file's merges (ignore_merges for llama3-style pre-tokenizers).
BOS/EOS are added by the caller (codec.py), not by a post-processor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import BPE

from warmload.tokenizer.spm_merges import spm_merges
from warmload.tokenizer.vocab import (
    ATTR_CONTROL,
    ATTR_LSTRIP,
    ATTR_RSTRIP,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    Vocab,
)

SPECIAL_ATTRS = ATTR_CONTROL | ATTR_UNKNOWN  # matched in text only with parse_special
PARTITIONED_ATTRS = SPECIAL_ATTRS | ATTR_USER_DEFINED  # cut out before tokenizing


def _bpe_merges(vocab: Vocab, index: dict[str, int]) -> list[tuple[str, str]]:
    """The file's merges whose parts and result are tokens (tokenizers refuses any other), each
    split at the first space after its first character, as llama.cpp splits them. One loop
    without calls: SmolLM2's 49k merges are a third of its tokenizer's build."""
    assert vocab.merges is not None
    pairs = []
    append = pairs.append
    for merge in vocab.merges:
        pos = merge.find(" ", 1)
        if pos > 0:
            left, right = merge[:pos], merge[pos + 1 :]
            if left in index and right in index and left + right in index:
                append((left, right))
    return pairs


def _added_tokens(vocab: Vocab) -> list[AddedToken]:
    attrs = vocab.attrs
    added = []
    for i in np.nonzero(attrs & PARTITIONED_ATTRS)[0].tolist():
        attr = int(attrs[i])
        added.append(
            AddedToken(
                vocab.tokens[i],
                special=bool(attr & SPECIAL_ATTRS),
                normalized=False,
                lstrip=bool(attr & ATTR_LSTRIP),
                rstrip=bool(attr & ATTR_RSTRIP),
            )
        )
    return added


def _spm_tokenizer(vocab: Vocab, index: dict[str, int], cache_folder: Path | None) -> RustTokenizer:
    assert vocab.scores is not None
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    model = BPE(
        vocab=index,
        merges=spm_merges(vocab.tokens, vocab.scores, cache_folder),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = RustTokenizer(model)
    steps = [normalizers.Replace(" ", "▁")]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


def _bpe_tokenizer(vocab: Vocab, index: dict[str, int]) -> RustTokenizer:
    assert vocab.pre is not None
    model = BPE(
        vocab=index,
        merges=_bpe_merges(vocab, index),
        ignore_merges=vocab.pre.ignore_merges,
    )
    tokenizer = RustTokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in vocab.pre.regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    return tokenizer


def build_backend(vocab: Vocab, cache_folder: Path | None = None) -> RustTokenizer:
    """The Rust tokenizer for `vocab` (no BOS/EOS handling; special tokens parsed by default).
    cache_folder: where SPM merges derived from the scores may be kept between runs."""
    index = vocab.index
    if vocab.model == "llama":
        tokenizer = _spm_tokenizer(vocab, index, cache_folder)
    else:
        tokenizer = _bpe_tokenizer(vocab, index)
    tokenizer.add_tokens(_added_tokens(vocab))
    return tokenizer
