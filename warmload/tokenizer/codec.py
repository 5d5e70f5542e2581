"""Tokenizer: text <-> token ids for a GGUF vocab, with llama.cpp's ids and pieces.

encode follows llama.cpp's `llama_tokenize(vocab, text, add_special, parse_special)`; pieces
follow `llama_token_to_piece` and decode follows `llama_detokenize(remove_special=false,
unparse_special=not skip_special)` (src/llama-vocab.cpp), minus its `clean_spaces` pass: decoded
text is exactly the concatenation of the pieces, so a stream of pieces adds up to decode().
"""

from __future__ import annotations

import codecs
import gc
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

from warmload.config import cache_dir
from warmload.errors import RequestError
from warmload.tokenizer.backend import SPECIAL_ATTRS, build_backend
from warmload.tokenizer.vocab import (
    ATTR_BYTE,
    ATTR_NORMAL,
    ATTR_USER_DEFINED,
    Vocab,
    read_vocab,
)


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return {chr(b if b in printable else next(extra)): b for b in range(256)}


_BYTE_DECODER = _bytes_to_unicode()


class Tokenizer:
    """A GGUF file's tokenizer. Thread-safe; build with build_tokenizer() or load_tokenizer()."""

    def __init__(self, vocab: Vocab, backend: RustTokenizer, metadata: dict[str, Any]) -> None:
        self.vocab = vocab
        self._backend = backend
        self._lock = threading.Lock()  # encode_special_tokens is state on the shared backend
        self._pieces: list[bytes | None] = [None] * vocab.n_tokens
        self.model = vocab.model
        self.pre = vocab.pre.name if vocab.pre else None
        self.vocab_size = vocab.n_tokens
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.eot_id, self.eom_id = vocab.eot_id, vocab.eom_id
        self.unk_id, self.pad_id = vocab.unk_id, vocab.pad_id
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self.add_space_prefix = vocab.add_space_prefix
        self.stop_ids: frozenset[int] = vocab.eog_ids
        self.bos_token = vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else ""
        self.eos_token = vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else ""
        template = metadata.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.architecture: str | None = metadata.get("general.architecture")

    def __repr__(self) -> str:
        return (
            f"Tokenizer(model={self.model!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, stop_ids={sorted(self.stop_ids)})"
        )

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's llama_tokenize.

        add_special adds BOS (and EOS) where the file says to (tokenizer.ggml.add_bos_token /
        add_eos_token); parse_special lets control tokens written in the text (e.g.
        "<|im_start|>") become their ids instead of being tokenized as plain text.
        """
        if not isinstance(text, str):
            raise RequestError(f"text to encode must be a str, not {type(text).__name__}", "text")
        try:
            with self._lock:
                if self._backend.encode_special_tokens == parse_special:
                    self._backend.encode_special_tokens = not parse_special
                # the batch "fast" path skips offsets: half the time of encode()
                ids = self._backend.encode_batch_fast([text], add_special_tokens=False)[0].ids
        except (UnicodeEncodeError, TypeError):  # tokenizers: "TextInputSequence must be str"
            bad = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise RequestError(
                f"text is not valid Unicode (lone surrogate?): {bad[:80]!r}", "text"
            ) from None
        if add_special and self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    # -- pieces and decoding ----------------------------------------------------------------

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise RequestError(
                f"token id {token_id} is out of range (vocab has {self.vocab_size} tokens)", "ids"
            )

    def _piece(self, token_id: int) -> bytes:
        """The bytes of a token as llama.cpp's token_to_piece(special=true)."""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._make_piece(token_id)
            self._pieces[token_id] = piece
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        attr = int(self.vocab.attrs[token_id])
        text = self.vocab.tokens[token_id]
        if attr & (SPECIAL_ATTRS | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogatepass")
        if attr & ATTR_NORMAL:
            if self.model == "llama":
                return text.replace("▁", " ").encode("utf-8", "surrogatepass")
            # llama.cpp writes "[UNK_BYTE_0x..]" for a character outside the byte alphabet;
            # its own UTF-8 is the more useful fallback
            return b"".join(
                bytes((_BYTE_DECODER[c],)) if c in _BYTE_DECODER else c.encode() for c in text
            )
        if attr & ATTR_BYTE:
            return bytes((int(text[3:5], 16),))
        return b""  # unused / undefined tokens render as nothing

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """A token's bytes (may be part of a UTF-8 character); special=False: b"" for control
        and unknown tokens, as llama.cpp's llama_token_to_piece."""
        self._check_id(token_id)
        if not special and self.vocab.attrs[token_id] & SPECIAL_ATTRS:
            return b""
        return self._piece(token_id)

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown tokens (the ones decode(skip_special=True) drops)."""
        self._check_id(token_id)
        return bool(self.vocab.attrs[token_id] & SPECIAL_ATTRS)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`: the pieces joined, invalid UTF-8 replaced by U+FFFD.

        As llama.cpp's detokenize, with a space-prefix vocab (Llama 2, Mistral) the first
        token's piece loses one leading space; a leading BOS takes that strip, so the text after
        it keeps its space.
        """
        pieces = [self.token_to_piece(int(i), not skip_special) for i in ids]
        if pieces and self.add_space_prefix and pieces[0][:1] == b" ":
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """An incremental decoder whose pushed pieces join to decode(all ids, skip_special)."""
        return StreamDecoder(self, skip_special)

    # -- vocabulary ---------------------------------------------------------------------------

    def id_to_token(self, token_id: int) -> str:
        """The token's text as stored in the vocab (with "▁" or byte-level characters)."""
        self._check_id(token_id)
        return self.vocab.tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)


class StreamDecoder:
    """Turns token ids into text one at a time without ever emitting broken UTF-8.

    A multi-byte character split across tokens (byte-fallback <0xXX> tokens, byte-level BPE
    pieces) is held back until complete; flush() emits what is left (U+FFFD for an incomplete
    tail). The pushed texts joined equal tokenizer.decode(ids, skip_special).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._special = not skip_special
        self._first = True
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes ("" while a character is still incomplete)."""
        piece = self._tokenizer.token_to_piece(int(token_id), self._special)
        if self._first:
            self._first = False
            if self._tokenizer.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """The held-back bytes of an unfinished character, as U+FFFD ("" if none)."""
        return self._utf8.decode(b"", final=True)


def build_tokenizer(metadata: dict[str, Any], use_cache: bool = True) -> Tokenizer:
    """A Tokenizer from a checkpoint's metadata (open_checkpoint(path).metadata): GGUF keys,
    or a Hugging Face folder's tokenizer.json (tokenizer/hf.py).

    use_cache: keep the merges derived from a SentencePiece vocab's scores under
    cache_dir()/tokenizer (halves the build of Gemma's 262k vocab); ids are the same either way.
    """
    if "tokenizer.ggml.tokens" not in metadata and "hf.tokenizer_json" in metadata:
        from warmload.tokenizer.hf import build_hf_tokenizer  # imports this module

        return build_hf_tokenizer(metadata)
    cache_folder = cache_dir() / "tokenizer" if use_cache else None
    with _gc_paused():
        vocab = read_vocab(metadata)
        backend = build_backend(vocab, cache_folder)
    vocab.index = {}  # the backend has its own; Gemma's 262k-entry dict is 14 MB of RSS
    return Tokenizer(vocab, backend, metadata)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC passes while ~10^6 tuples and strings are made (a third of Gemma's build)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
