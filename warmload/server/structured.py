"""Structured output by constrained decoding: OpenAI's response_format (json_object,
json_schema), llama.cpp's `json_schema` and `grammar` (GBNF) fields and Ollama's `format`
("json" or a schema), compiled by llguidance into a token mask applied before each sample.

llguidance (guidance-ai, MIT; Earley parser over a lexer, mask in ~50 us on a 128k vocab) was
chosen over xgrammar and outlines-core: comparison in BENCHMARKS.md, "Structured output".
The warmload tokenizer's pieces become llguidance's token table (control tokens marked with a
leading 0xff byte, as llguidance/llamacpp.py does), built once per tokenizer.

Reference: llguidance's python/llguidance/_lib.pyi and numpy.py (bitmask layout: bit t%32 of
word t//32 allows token t); the OpenAI API reference for response_format.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from warmload.errors import RequestError, UnsupportedError
from warmload.server.fields import get

_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the output must match: kind "json_schema" (value: the schema; {"type": "object"}
    for plain JSON mode), "grammar" (GBNF or Lark text) or "regex"."""

    kind: str
    value: Any

    def grammar(self) -> str:
        """The llguidance grammar (raises RequestError for a schema/grammar it cannot take)."""
        llg = _llguidance()
        try:
            if self.kind == "json_schema":
                return llg.LLMatcher.grammar_from_json_schema(
                    self.value, defaults={"whitespace_flexible": False}
                )
            if self.kind == "regex":
                return llg.LLMatcher.grammar_from_regex(self.value)
            return llg.grammar_from("grammar", self.value)
        except ValueError as exc:
            raise RequestError(f"the {self.kind} cannot be compiled: {exc}", self.kind) from None


JSON_OBJECT = Constraint("json_schema", {"type": "object"})


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise UnsupportedError(
            "structured output needs the llguidance package: pip install llguidance"
        ) from None
    return llguidance


def parse_openai_constraint(data: dict[str, Any]) -> Constraint | None:
    """response_format, or llama.cpp's json_schema / grammar fields (at most one)."""
    found: list[Constraint] = []
    fmt = get(data, "response_format", dict)
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            found.append(JSON_OBJECT)
        elif kind == "json_schema":
            spec = get(fmt, "json_schema", dict)
            schema = get(spec or {}, "schema", dict)
            if schema is None:
                raise RequestError(
                    "response_format.json_schema.schema must be a JSON schema object",
                    "response_format",
                )
            found.append(Constraint("json_schema", schema))
        elif kind != "text":
            raise RequestError(
                f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                "response_format",
            )
    schema = get(data, "json_schema", dict)
    if schema is not None:
        found.append(Constraint("json_schema", schema))
    grammar = get(data, "grammar", str)
    if grammar:
        found.append(Constraint("grammar", grammar))
    if len(found) > 1:
        raise RequestError(
            "give one of response_format, json_schema and grammar", "response_format"
        )
    return found[0] if found else None


def parse_ollama_format(value: Any) -> Constraint | None:
    """Ollama's format: "" (none), "json" (any JSON object) or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return JSON_OBJECT
    if isinstance(value, dict):
        return Constraint("json_schema", value)
    raise RequestError(f"format must be 'json' or a JSON schema object, got {value!r}", "format")


class _VocabView:
    """What llguidance.TokenizerWrapper reads from a tokenizer: pieces, EOS, encode()."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        stop = sorted(tokenizer.stop_ids)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else stop[0]
        self.bos_token_id = tokenizer.bos_id
        self.tokens = []
        self.special_token_ids = []
        for token in range(tokenizer.vocab_size):
            piece = tokenizer.token_to_piece(token)
            if tokenizer.is_special(token):
                piece = b"\xff" + piece
                self.special_token_ids.append(token)
            self.tokens.append(piece)

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's LLTokenizer for a warmload Tokenizer (built once: ~0.5 s on 150k tokens)."""
    llg = _llguidance()
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is None:
            view = _VocabView(tokenizer)
            stops = sorted(tokenizer.stop_ids) or [view.eos_token_id]
            cached = llg.LLTokenizer(llg.TokenizerWrapper(view), eos_token=stops)
            _TOKENIZERS[tokenizer] = cached
    return cached


def compile_constraint(constraint: Constraint, tokenizer: Any) -> str:
    """Check that the constraint compiles for this tokenizer; its grammar text."""
    llg = _llguidance()
    grammar = constraint.grammar()
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(
        grammar, ll_tokenizer(tokenizer)
    )
    if is_error:
        raise RequestError(f"the {constraint.kind} is not supported: {messages[0]}", "format")
    return grammar


class GrammarProcessor:
    """engine.LogitsProcessor: tokens the grammar does not allow next get -inf."""

    def __init__(self, grammar: str, tokenizer: Any) -> None:
        llg = _llguidance()
        self.matcher = llg.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise RequestError(f"grammar error: {self.matcher.get_error()}", "format")
        self.vocab_size = tokenizer.vocab_size
        self.finished = False

    def allowed(self) -> np.ndarray:
        """Boolean mask (vocab_size,) of the tokens allowed next."""
        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(words, bitorder="little")[: self.vocab_size].view(bool)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of the row with -inf where the grammar forbids (padded output rows too).
        On the CPU in numpy: one masked copy, no torch ops (~10x cheaper per token)."""
        allowed = self.allowed()
        n = min(self.vocab_size, logits.shape[-1])
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 1:
            out = np.full(logits.shape[-1], -np.inf, dtype=np.float32)
            np.copyto(out[:n], logits.numpy()[:n], where=allowed[:n])
            return torch.from_numpy(out)
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[:n] = torch.from_numpy(allowed[:n]).to(logits.device)
        return logits.masked_fill(~mask, float("-inf"))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RequestError(
                f"constrained decoding failed: {self.matcher.get_error() or 'token refused'}",
                "format",
            )
        self.finished = self.matcher.is_stopped()


class BiasProcessor:
    """OpenAI's logit_bias: added to the logits before sampling (-100 bans a token)."""

    finished = False

    def __init__(self, bias: dict[int, float]) -> None:
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        inside = self.ids < logits.shape[-1]
        logits[self.ids[inside]] += self.values[inside]
        return logits

    def accept(self, token: int) -> None:
        pass


class ChainProcessor:
    """Several processors in order (bias first, then the grammar's mask)."""

    def __init__(self, processors: list[Any]) -> None:
        self.processors = processors

    @property
    def finished(self) -> bool:
        return any(p.finished for p in self.processors)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for p in self.processors:
            logits = p.apply(logits)
        return logits

    def accept(self, token: int) -> None:
        for p in self.processors:
            p.accept(token)


def make_processor(
    tokenizer: Any, bias: dict[int, float], grammar: str | None
) -> ChainProcessor | None:
    """The processors one choice of a request needs (None: plain sampling)."""
    chain: list[Any] = []
    if bias:
        chain.append(BiasProcessor(bias))
    if grammar is not None:
        chain.append(GrammarProcessor(grammar, tokenizer))
    return ChainProcessor(chain) if chain else None


def schema_text(constraint: Constraint | None) -> str | None:
    """The schema as compact JSON (for logs and the tool prompt)."""
    if constraint is None or constraint.kind != "json_schema":
        return None
    return json.dumps(constraint.value, separators=(",", ":"))
