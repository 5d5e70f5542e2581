"""Tokenizer speed: build from the GGUF file, encode, decode, stream-decode; warmload side by side
with llama-cpp-python (vocab_only) and transformers (its GGUF tokenizer conversion) when present.

    .venv/bin/python benchmarks/bench_tokenizer.py [--runs 5] [--models smollm2,gemma3-270m]

Prints one JSON line per (model, library, operation) with min/median seconds and a table.
Encode/decode run on the same ~64 KB mixed text (English, code, numbers, CJK, emoji).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warmload.catalog import resolve_model_path
from warmload.tokenizer import load_tokenizer

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock, and 1,000,000 people "
    'said: "Hello, world!"\n'
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
    "café naïve Straße — 你好，世界！日本語のテキスト。안녕하세요 😀👍🏽\n"
)
TEXT = SAMPLE * (65536 // len(SAMPLE))


def timed(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    seconds, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return seconds, result


def bench_warmload(path: Path, runs: int) -> dict[str, list[float]]:
    build, tok = timed(lambda: load_tokenizer(path), runs)
    encode, ids = timed(lambda: tok.encode(TEXT), runs)
    decode, _ = timed(lambda: tok.decode(ids), runs)

    def stream() -> str:
        decoder = tok.stream_decoder()
        return "".join([decoder.push(i) for i in ids]) + decoder.flush()

    stream_s, _ = timed(stream, runs)
    return {"build": build, "encode": encode, "decode": decode, "stream_decode": stream_s}


def bench_llama_cpp(path: Path, runs: int) -> dict[str, list[float]] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    load = lambda: llama_cpp.Llama(str(path), vocab_only=True, verbose=False)  # noqa: E731
    build, llm = timed(load, runs)
    data = TEXT.encode()
    encode, ids = timed(lambda: llm.tokenize(data, add_bos=True, special=False), runs)
    decode, _ = timed(lambda: llm.detokenize(ids), runs)
    return {"build": build, "encode": encode, "decode": decode}


def bench_transformers(path: Path, runs: int) -> dict[str, list[float]] | None:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    load = lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)  # noqa: E731
    try:
        build, tok = timed(load, min(runs, 2))  # converts the whole vocab in Python: slow
    except Exception as exc:  # a GGUF architecture transformers cannot convert
        print(f"# transformers could not load {path.name}: {exc}")
        return None
    encode, ids = timed(lambda: tok.encode(TEXT), runs)
    decode, _ = timed(lambda: tok.decode(ids), runs)
    return {"build": build, "encode": encode, "decode": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        path = resolve_model_path(model)
        peers = {
            "warmload": bench_warmload(path, args.runs),
            "llama-cpp-python": bench_llama_cpp(path, args.runs),
            "transformers": bench_transformers(path, args.runs),
        }
        for library, result in peers.items():
            for op, seconds in (result or {}).items():
                row = {
                    "model": model,
                    "library": library,
                    "op": op,
                    "min_s": round(min(seconds), 5),
                    "median_s": round(statistics.median(seconds), 5),
                    "runs": len(seconds),
                    "text_bytes": len(TEXT.encode()) if op != "build" else None,
                }
                rows.append(row)
                print(json.dumps(row))
    print(f"\n{'model':<13}{'library':<18}{'op':<15}{'min ms':>10}{'median ms':>11}")
    for r in rows:
        print(
            f"{r['model']:<13}{r['library']:<18}{r['op']:<15}"
            f"{r['min_s'] * 1e3:>10.1f}{r['median_s'] * 1e3:>11.1f}"
        )


if __name__ == "__main__":
    main()
