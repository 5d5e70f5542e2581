"""Kept warm: after the OS evicts an idle served model's pages, the next request's TTFT over the
steady TTFT, without and with the server's re-warm (ModelCache.rewarm, as `serve` runs it every
30 s while idle). One process, the model served from a private copy of its file (pages that
another process maps cannot be evicted); eviction is madvise(MADV_DONTNEED) on the model's
mapping then posix_fadvise(DONTNEED), the residency before each request is recorded.

    .venv/bin/python benchmarks/bench_keepwarm.py [--model smollm2] [--runs 3]

The issue's target: after eviction and re-warm, <= 1.2x steady. Requests go through the
engine (20-token prompt, 1 new token, the cache reset so the prompt is recomputed whole).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from warmload.config import LoadConfig, ServerConfig

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type with an oil-based ink and a wooden press, and"
)
MADV_DONTNEED = 4  # drops the mapping's page-table entries (a read-only file mapping: safe)


def evict(engine) -> None:
    """Drop every mapping's page-table entries for the model file (this process may map it
    more than once), then the file's pages from the page cache."""
    from warmload.loader import warm

    path = str(Path(engine.path).resolve())
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(path):
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                warm._libc.madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ttft(engine, ids) -> float:
    engine.reset()
    started = time.perf_counter()
    engine.generate(ids, max_tokens=1, temperature=0)
    return time.perf_counter() - started


async def measure(path: str, runs: int, threads: int) -> dict:
    from warmload.server.app import create_app

    load = LoadConfig(threads=threads, prompt_cache="off", warmup="none")
    config = ServerConfig(models=(("m", path),), port=0, load=load)
    cache = create_app(config).state.warmload.cache
    entry = await cache.acquire("m")
    cache.release(entry)
    engine = entry.engine
    ids = engine.tokenizer.encode(PROMPT)[:20]
    steady = statistics.median(ttft(engine, ids) for _ in range(5))
    rows: dict[str, list[float]] = {"evicted": [], "rewarmed": [], "residency_before": []}
    for _ in range(runs):
        evict(engine)
        rows["residency_before"].append(engine.residency())
        rows["evicted"].append(ttft(engine, ids) / steady)
        evict(engine)
        assert cache.rewarm(min_interval=0) == ["m"], "the evicted model was not re-warmed"
        entry.rewarm.join()
        rows["rewarmed"].append(ttft(engine, ids) / steady)
    cache.close()
    return {
        "steady_s": steady,
        "evicted_over_steady": statistics.median(rows["evicted"]),
        "rewarmed_over_steady": statistics.median(rows["rewarmed"]),
        "residency_before": max(rows["residency_before"]),
        "runs": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--copy-dir", default="/tmp/warmload-bench")
    args = p.parse_args()
    from warmload.catalog import resolve_model_path

    src = resolve_model_path(args.model)
    path = Path(args.copy_dir) / Path(src).name
    if not path.exists() or path.stat().st_size != Path(src).stat().st_size:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    result = asyncio.run(measure(str(path), args.runs, args.threads))
    print(json.dumps({"bench": "keepwarm", "model": path.name, **result}))
    print(
        f"{path.name}: steady TTFT {result['steady_s'] * 1000:.0f} ms; next request after "
        f"eviction {result['evicted_over_steady']:.2f}x steady, after eviction and re-warm "
        f"{result['rewarmed_over_steady']:.2f}x (residency before <= "
        f"{result['residency_before']:.2f})"
    )


if __name__ == "__main__":
    main()
