"""The tokenizer of a GGUF file, built from its metadata with the `tokenizers` library (Rust).

Token ids match llama.cpp (src/llama-vocab.cpp) for SentencePiece vocabs with scores
(`tokenizer.ggml.model == "llama"`: Llama 1/2, Mistral, Gemma 1-3) and byte-level BPE vocabs
(`"gpt2"`: Llama 3, Qwen, SmolLM, StarCoder, ... with their `tokenizer.ggml.pre` regexes).

    vocab.py        metadata -> Vocab (attributes, special ids, EOG set), as llama.cpp loads it
    pretokenize.py  tokenizer.ggml.pre -> split regexes (data)
    spm_merges.py   SentencePiece scores -> BPE merges (numpy)
    backend.py      Vocab -> tokenizers.Tokenizer
    codec.py        Tokenizer (encode/decode/pieces) and StreamDecoder
    hf.py           Hugging Face tokenizer.json / tokenizer_config.json <-> Tokenizer
"""

from __future__ import annotations

from pathlib import Path

from warmload.errors import TokenizerError
from warmload.formats.open import open_checkpoint
from warmload.tokenizer.codec import StreamDecoder, Tokenizer, build_tokenizer

__all__ = ["StreamDecoder", "Tokenizer", "build_tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | Path, use_cache: bool = True) -> Tokenizer:
    """The tokenizer of a GGUF file or HF model folder (reads headers only; vocab-only GGUF
    files work)."""
    with open_checkpoint(path) as checkpoint:
        metadata = checkpoint.metadata
    try:
        return build_tokenizer(metadata, use_cache=use_cache)
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None
