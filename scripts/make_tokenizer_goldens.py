"""Write tests/golden/tokenizer_ids.json: llama.cpp's token ids and decoded text for the two
packaged models, the reference tests/test_tokenizer.py checks warmload's tokenizer against.

Needs llama-cpp-python (`make bench-peers`); the committed JSON is the golden, so the tests do
not. Run from the repository root:

    .venv/bin/python scripts/make_tokenizer_goldens.py

ids: llama_cpp.Llama(path, vocab_only=True).tokenize(text, add_bos, special) (= llama_tokenize
with add_special, parse_special). text: llama_detokenize(ids, remove_special=False,
unparse_special=not skip_special), which is what decode(ids, skip_special) reproduces for these
two vocabs (neither cleans spaces).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterable
from pathlib import Path

import llama_cpp

from warmload.catalog import resolve_model_path

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tokenizer_ids.json"
MODELS = ("smollm2", "gemma3-270m")

TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll like it; they've said we'd go, didn't they?",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "<html><body><table><tr><td>cell</td></tr></table></body></html>",
    "3.14159 2718281828 1,000,000 0x1F 1e-9 -42 +7 100%",
    "12345678901234567890",
    "café naïve résumé Ångström façade jalapeño Straße",
    "Привет, мир! Γειά σου Κόσμε",
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🫨 ❤️",
    "emoji🙂inside😀words",
    "\n",
    "\n\n\n",
    "   leading and trailing spaces   ",
    "tabs\tand\t\ttabs\t\t\t",
    "mixed \t \n \r\n whitespace  \n\n  ",
    "a" * 40,
    " " * 40,
    "\u00a0non-breaking\u3000ideographic\u2003em space",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk></s><s>",
    "<|endoftext|> <reponame> <file_sep>",
    "text<|im_end|>more<end_of_turn>end",
    "<0x41> ▁ ▁▁ literal byte-token text",
    "Ünïcödé\u0301 combining e\u0301 and precomposed é",
]

CASES = [(False, False), (True, False), (True, True), (False, True)]  # (add_special, parse_special)


def detokenize(llm: llama_cpp.Llama, ids: list[int], skip_special: bool) -> str:
    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    size = 16 * len(ids) + 64
    buf = ctypes.create_string_buffer(size)
    vocab = llm._model.vocab
    n = llama_cpp.llama_detokenize(vocab, tokens, len(ids), buf, size, False, not skip_special)
    assert 0 <= n <= size, n
    return buf.raw[:n].decode("utf-8", "replace")


def model_goldens(name: str) -> dict:
    path = resolve_model_path(name)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    encode = []
    for text in TEXTS:
        for add_special, parse_special in CASES:
            ids = llm.tokenize(text.encode(), add_bos=add_special, special=parse_special)
            encode.append(
                {
                    "text": text,
                    "add_special": add_special,
                    "parse_special": parse_special,
                    "ids": ids,
                }
            )
    decode = []
    for case in encode:
        if case["add_special"] == case["parse_special"]:  # both on, both off: enough variety
            for skip in (True, False):
                text = detokenize(llm, case["ids"], skip)
                decode.append({"ids": case["ids"], "skip_special": skip, "text": text})
    vocab = llm._model.vocab
    n_tokens = llama_cpp.llama_vocab_n_tokens(vocab)
    special = {
        "n_tokens": n_tokens,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": [i for i in range(n_tokens) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "control": _ranges(
            i for i in range(n_tokens) if llama_cpp.llama_vocab_is_control(vocab, i)
        ),
    }
    return {"file": path.name, "special": special, "encode": encode, "decode": decode}


def _ranges(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids as [first, last] runs."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _dump(data: dict) -> str:
    """JSON with one case per line (reviewable diffs, a third of indent=1's size)."""
    lines = ["{", f'"generator": {json.dumps(data["generator"])},', '"models": {']
    for i, (name, model) in enumerate(data["models"].items()):
        lines.append(f'{json.dumps(name)}: {{"file": {json.dumps(model["file"])},')
        lines.append(f'"special": {json.dumps(model["special"])},')
        for key in ("encode", "decode"):
            cases = [json.dumps(c, ensure_ascii=False) for c in model[key]]
            lines.append(
                f'"{key}": [\n' + ",\n".join(cases) + "\n]" + ("," if key == "encode" else "")
            )
        lines.append("}" + ("," if i + 1 < len(data["models"]) else ""))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    data = {
        "generator": f"scripts/make_tokenizer_goldens.py, llama-cpp-python {llama_cpp.__version__}",
        "models": {name: model_goldens(name) for name in MODELS},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(_dump(data), encoding="utf-8")
    n = sum(len(m["encode"]) + len(m["decode"]) for m in data["models"].values())
    print(f"wrote {OUT} ({n} cases)")


if __name__ == "__main__":
    main()
