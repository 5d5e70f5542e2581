"""Opening a GGUF file and reading all its metadata: warmload vs gguf-py (and llama.cpp).

For each real model, in the same run:
  warmload     open_checkpoint(path): header, every metadata value, tensor infos, validation
  gguf-py      GGUFReader(path), then field.contents() of every field (the values as Python)
  llama.cpp    (when llama-cpp-python is installed) Llama(path, vocab_only=True): llama.cpp's
               gguf parse plus its vocabulary build: more work than a header read, shown as
               a reference point only
Prints one JSON line per (model, implementation) and a table with min/median seconds and
the ratio to warmload. Files are read once before timing (page cache warm for everyone).

    .venv/bin/python benchmarks/bench_open.py [--runs 20] [--peer-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from warmload.catalog import resolve_model_path
from warmload.formats.open import open_checkpoint

MODELS = ("smollm2", "gemma3-270m")


def open_warmload(path: Path) -> int:
    with open_checkpoint(path) as ck:
        return len(ck.metadata) + len(ck.tensors)


def open_gguf_py(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    values = [field.contents() for field in reader.fields.values()]
    return len(values) + len(reader.tensors)


def open_llama_cpp(path: Path) -> int:
    from llama_cpp import Llama

    saved = os.dup(2)  # llama.cpp logs to fd 2 even with verbose=False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        n = llm.n_vocab()
        llm.close()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return n


def timed(fn: Callable[[Path], int], path: Path, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(path)
        seconds.append(time.perf_counter() - started)
    return seconds


def peers() -> dict[str, Callable[[Path], int]]:
    out = {"warmload": open_warmload, "gguf-py": open_gguf_py}
    try:
        import llama_cpp  # noqa: F401

        out["llama.cpp vocab_only"] = open_llama_cpp
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of warmload")
    parser.add_argument("--peer-runs", type=int, default=3, help="runs of each (slow) peer")
    args = parser.parse_args()
    rows = []
    for model in MODELS:
        path = resolve_model_path(model)
        path.read_bytes()  # warm the page cache for every implementation alike
        results = {}
        for name, fn in peers().items():
            fn(path)  # imports and first-touch outside the timing
            runs = args.runs if name == "warmload" else args.peer_runs
            seconds = timed(fn, path, runs)
            results[name] = (min(seconds), statistics.median(seconds), runs)
        base = results["warmload"][0]
        for name, (best, median, runs) in results.items():
            record = {
                "bench": "open",
                "model": model,
                "impl": name,
                "runs": runs,
                "min_s": round(best, 6),
                "median_s": round(median, 6),
                "ratio_to_warmload": round(best / base, 1),
            }
            print(json.dumps(record), flush=True)
            rows.append(record)
    print()
    head = ("model", "implementation", "runs", "min ms", "median ms", "x")
    print(f"{head[0]:<12} {head[1]:<22} {head[2]:>4} {head[3]:>10} {head[4]:>10} {head[5]:>8}")
    for r in rows:
        print(
            f"{r['model']:<12} {r['impl']:<22} {r['runs']:>4} {r['min_s'] * 1e3:>10.1f} "
            f"{r['median_s'] * 1e3:>10.1f} {r['ratio_to_warmload']:>8.1f}"
        )


if __name__ == "__main__":
    main()
