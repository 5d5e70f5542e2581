"""Dequantization throughput per GGML type: warmload (torch) vs gguf-py (numpy), same run.

Throughput is GB/s of input (quantized) bytes; each type gets --mib MiB of random blocks with
finite random f16 scales. Columns: warmload into a fresh tensor (what `dequantize` returns,
page faults of the new output included, as for gguf-py), warmload into a preallocated tensor
(`out=`, how a loader fills parameter storage) and gguf.quants.dequantize (numpy, one thread).
min and median of --runs runs; speedup = gguf-py min time / warmload min time (fresh output),
speedup out= likewise for the out= column.

    .venv/bin/python benchmarks/bench_dequant.py [--mib 16] [--runs 5] [--threads 2] [--types ...]

Prints one JSON line per measurement, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from warmload.formats.ggml_types import GGML_TYPES
from warmload.quant.dequant import DEQUANTIZERS, F16_FIELDS, dequantize
from warmload.quant.raw import empty_output

DEFAULT_TYPES = [
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]


def random_blocks(name: str, nbytes: int, rng: np.random.Generator) -> np.ndarray:
    """About nbytes of random blocks of type `name` as a (rows, row_bytes) uint8 array."""
    qtype = GGML_TYPES[name]
    row_blocks = max(1, 4096 // qtype.block_size)  # rows of 4096 elements (or one block)
    rows = max(1, nbytes // (row_blocks * qtype.type_size))
    if name in ("F16", "BF16", "F32"):
        values = rng.standard_normal(rows * row_blocks, dtype=np.float32)
        if name == "F16":
            raw = values.astype(np.float16).view(np.uint8)
        elif name == "BF16":
            raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = values.view(np.uint8)
        return raw.reshape(rows, -1)
    blocks = rng.integers(0, 256, (rows * row_blocks, qtype.type_size), dtype=np.uint8)
    for offset in F16_FIELDS[name]:
        scales = (rng.random(rows * row_blocks, dtype=np.float32) * 0.01).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def time_runs(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up: constants, allocator
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def bench_type(name: str, mib: float, runs: int, rng: np.random.Generator) -> list[dict]:
    raw = random_blocks(name, int(mib * (1 << 20)), rng)
    qtype = GGML_TYPES[name]
    shape = (raw.shape[0], raw.shape[1] // qtype.type_size * qtype.block_size)
    gtype = GGMLQuantizationType[name]
    # huge-page backed like dequantize's own outputs, and touched once: a loader writing into
    # storage it allocated up front
    out = empty_output(shape, torch.float32, torch.device("cpu")).fill_(0.0)
    candidates = {
        "warmload": lambda: dequantize(raw, name, shape),
        "warmload out=": lambda: dequantize(raw, name, shape, out=out),
        "gguf-py": lambda: gguf_quants.dequantize(raw, gtype),
    }
    results = []
    for runner, fn in candidates.items():
        seconds = time_runs(fn, runs)
        results.append(
            {
                "bench": "dequant",
                "type": name,
                "runner": runner,
                "input_nbytes": raw.nbytes,
                "output_nbytes": out.numel() * 4,
                "runs": runs,
                "min_seconds": min(seconds),
                "median_seconds": statistics.median(seconds),
                "gb_per_s_min": raw.nbytes / min(seconds) / 1e9,
                "gb_per_s_median": raw.nbytes / statistics.median(seconds) / 1e9,
                "torch_threads": torch.get_num_threads(),
            }
        )
    return results


def print_table(rows: list[dict]) -> None:
    by_type: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_type.setdefault(r["type"], {})[r["runner"]] = r
    head = (
        f"{'type':<7} {'warmload GB/s':>15} {'out= GB/s':>13} {'gguf-py GB/s':>14} {'speedup':>8}"
    )
    print(head + "   (input bytes; min-time / median-time)")
    for name, rs in by_type.items():
        w, o, g = rs["warmload"], rs["warmload out="], rs["gguf-py"]

        def cell(r: dict, width: int) -> str:
            return f"{r['gb_per_s_min']:.2f}/{r['gb_per_s_median']:.2f}".rjust(width)

        speedup = g["min_seconds"] / w["min_seconds"]
        speedup_out = g["min_seconds"] / o["min_seconds"]
        print(
            f"{name:<7} {cell(w, 15)} {cell(o, 13)} {cell(g, 14)} {speedup:>7.1f}x "
            f"{speedup_out:>5.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=16.0, help="MiB of blocks per type")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--types", nargs="*", default=DEFAULT_TYPES, choices=list(DEQUANTIZERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.types:
        for r in bench_type(name, args.mib, args.runs, rng):
            print(json.dumps(r), flush=True)
            rows.append(r)
    print_table(rows)


if __name__ == "__main__":
    main()
