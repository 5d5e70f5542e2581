"""Quantize at load, cached: the first load (quantizing into the cache), the cached load, and a
plain mmap load of the equivalent GGUF (the same bytes, made by `warmload quantize`).

    .venv/bin/python benchmarks/bench_quantize_at_load.py [--source F16.gguf] [--types Q8_0,Q4_K_M]
                                                          [-r 5] [--work DIR]

Without --source, SmolLM2-135M (the packaged model) is converted to F16 once with warmload's
quantizer (`quantize_checkpoint(..., "F16", allow_requantize=True)`: 135M weights, 271 MB) and
kept in --work. Each type gets a fresh cache folder. Cached and plain loads alternate, in this
process, with the files in the page cache, so the ratio compares them under the same conditions;
`check` is prepare_quantized alone on a hit (stat + header hashes: the cache's own cost). Prints
one JSON line per type, then a table. Issue 15's target: cached <= 1.2x plain.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import warmload
from warmload.catalog import resolve_model_path
from warmload.loader.quantize_at_load import prepare_quantized
from warmload.quantizer import quantize_checkpoint


def f16_source(work: Path) -> Path:
    out = work / "smollm2-135m-f16.gguf"
    if not out.exists():
        quantize_checkpoint(resolve_model_path("smollm2"), out, "F16", allow_requantize=True,
                            write_sha256_file=False)  # fmt: skip
    return out


def timed_load(path: Path, **options: object) -> float:
    started = time.perf_counter()
    engine = warmload.load(path, **options)
    seconds = time.perf_counter() - started
    engine.close()
    del engine
    gc.collect()
    return seconds


def bench_type(source: Path, qtype: str, work: Path, repetitions: int) -> dict:
    cache = work / f"cache-{qtype}"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["WARMLOAD_CACHE_DIR"] = str(cache)
    first = timed_load(source, quantize=qtype)
    ref = work / f"ref-{qtype}.gguf"
    started = time.perf_counter()
    quantize_checkpoint(source, ref, qtype, write_sha256_file=False)
    quantize_seconds = time.perf_counter() - started
    entry = prepare_quantized(source, qtype).path
    assert entry.read_bytes() == ref.read_bytes(), "cache entry differs from warmload quantize"
    timed_load(ref)  # both files mapped once before the measured rounds
    cached, plain, check = [], [], []
    for _ in range(repetitions):
        cached.append(timed_load(source, quantize=qtype))
        plain.append(timed_load(ref))
        started = time.perf_counter()
        prepare_quantized(source, qtype)
        check.append(time.perf_counter() - started)
    return {
        "source": str(source), "source_bytes": source.stat().st_size, "type": qtype,
        "entry_bytes": entry.stat().st_size, "first_load_s": round(first, 4),
        "quantize_cli_s": round(quantize_seconds, 4),
        "cached_load_s": round(statistics.median(cached), 4),
        "plain_load_s": round(statistics.median(plain), 4),
        "cached_min_s": round(min(cached), 4), "plain_min_s": round(min(plain), 4),
        "check_s": round(statistics.median(check), 5),
        "cached_over_plain": round(statistics.median(cached) / statistics.median(plain), 3),
        "repetitions": repetitions, "cpus": len(os.sched_getaffinity(0)),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=None, help="an F32/F16/BF16 GGUF or HF folder")
    p.add_argument("--types", default="Q8_0,Q4_K_M")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/warmload-bench-qload"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.source or f16_source(args.work)
    rows = []
    for qtype in args.types.split(","):
        row = bench_type(source, qtype, args.work, args.repetitions)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'type':<8} {'first load':>11} {'quantize':>9} {'cached':>8} {'plain':>8} "
          f"{'check':>8} {'cached/plain':>13}")  # fmt: skip
    for r in rows:
        print(f"{r['type']:<8} {r['first_load_s']:>10.3f}s {r['quantize_cli_s']:>8.3f}s "
              f"{r['cached_load_s']:>7.3f}s {r['plain_load_s']:>7.3f}s {r['check_s']:>7.4f}s "
              f"{r['cached_over_plain']:>12.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
