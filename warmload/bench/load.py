"""`warmload bench --load`: time to ready per load mode, warm and cold, next to a plain read.

Each case runs in a fresh process (`python -m warmload.bench.load CASE_JSON`) so peak RSS and
the page cache state belong to it: open the checkpoint, load_model (weights only: synthetic
files have no tokenizer), and optionally run one forward pass of a few tokens (the first
answer; with --lazy this is where the weights arrive). The baseline is the same file read once
with large sequential preads into one reused buffer, in the same state (warm: resident in the
page cache; cold: evicted with posix_fadvise(POSIX_FADV_DONTNEED) first, which needs a private
copy of the file that nobody else is reading). GB/s is the file's size over the time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from warmload.errors import WarmloadError

READ_CHUNK_BYTES = 64 << 20
FORWARD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class LoadCase:
    path: str
    mode: str  # a load mode, or "plain read"
    cold: bool
    lazy: bool = False
    forward: bool = False  # also time one forward pass (first answer)


@dataclass(slots=True)
class LoadRow:
    model: str
    size_bytes: int
    case: str  # "mmap", "mmap lazy", "plain read", ...
    cache: str  # "warm" | "cold"
    ready_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)  # ready + first forward pass
    peak_rss_bytes: int = 0
    skipped: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.ready_s) if self.ready_s else float("nan")

    @property
    def gb_per_s(self) -> float:
        return self.size_bytes / self.median_s / 1e9 if self.ready_s else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(median_s=self.median_s, gb_per_s=self.gb_per_s)
        return d


def evict(path: str) -> None:
    """Drop the file's pages from the page cache (Linux honours it for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def plain_read(path: str) -> int:
    """Read the whole file once, sequentially, into one reused buffer; bytes read."""
    buf = memoryview(bytearray(READ_CHUNK_BYTES))
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        while n := os.readv(fd, [buf]):
            total += n
        return total
    finally:
        os.close(fd)


def measure(case: LoadCase) -> dict:
    """Run one case in this process; {"ready_s", "first_s", "peak_rss_bytes", "stats"}."""
    from warmload.memstats import peak_rss_bytes

    if case.mode == "plain read":
        started = time.perf_counter()
        plain_read(case.path)
        return {"ready_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}
    import torch

    from warmload.config import LoadConfig
    from warmload.formats.open import open_checkpoint
    from warmload.loader import load_model

    started = time.perf_counter()
    checkpoint = open_checkpoint(case.path, load_mode=case.mode)
    model, stats = load_model(checkpoint, LoadConfig(load_mode=case.mode, lazy=case.lazy))
    result = {"ready_s": time.perf_counter() - started}
    if case.forward:
        with torch.inference_mode():
            cache = model.new_cache(FORWARD_TOKENS)
            model.compute_logits(model(torch.arange(FORWARD_TOKENS)[None], cache, 0)[:, -1:])
        result["first_s"] = time.perf_counter() - started
    result.update(peak_rss_bytes=peak_rss_bytes(), stats=stats.as_dict())
    return result


def run_case(case: LoadCase, timeout_s: float = 3600) -> dict:
    """measure(case) in a fresh process, after evicting or pre-reading the file."""
    if case.cold:
        evict(case.path)
    else:
        plain_read(case.path)  # resident, as far as memory allows
    cmd = [sys.executable, "-m", "warmload.bench.load", json.dumps(asdict(case))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WarmloadError(f"load bench {case}: failed: " + " | ".join(tail))
    return json.loads(lines[-1])


def memory_needed(path: str, mode: str, lazy: bool, forward: bool) -> int:
    """Bytes of RAM a case needs: fp32 parameters (unless lazy without a forward pass), plus
    the file itself for "memory" mode."""
    from warmload.formats.open import open_checkpoint

    with open_checkpoint(path) as ckpt:
        params = sum(t.n_elements for t in ckpt.tensors.values()) * 4
        size = sum(t.nbytes for t in ckpt.tensors.values())
    need = 0 if lazy and not forward else params
    return need + (size if mode == "memory" else 0)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def run_load_bench(
    models: Sequence[Path],
    modes: Sequence[str],
    caches: Sequence[str] = ("warm",),
    lazy: bool = False,
    forward: bool = False,
    repetitions: int = 3,
    on_row: Callable[[LoadRow], None] | None = None,
) -> list[LoadRow]:
    """Rows of plain read and every mode, per model and cache state (see the docstring)."""
    rows = []
    for model in models:
        size = os.path.getsize(model)
        for cache in caches:
            for mode in ("plain read", *modes):
                name = mode + (" lazy" if lazy and mode != "plain read" else "")
                row = LoadRow(model.name, size, name, cache)
                use_lazy = lazy and mode != "plain read"
                need = (
                    0
                    if mode == "plain read"
                    else memory_needed(str(model), mode, use_lazy, forward)
                )
                if need > 0.8 * available_bytes():
                    row.skipped = f"needs {need / 1e9:.1f} GB, {available_bytes() / 1e9:.1f} free"
                else:
                    case = LoadCase(str(model), mode, cache == "cold", use_lazy, forward)
                    for _ in range(repetitions):
                        result = run_case(case)
                        row.ready_s.append(result["ready_s"])
                        if "first_s" in result:
                            row.first_s.append(result["first_s"])
                        row.peak_rss_bytes = max(row.peak_rss_bytes, result["peak_rss_bytes"])
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def main() -> int:
    case = LoadCase(**json.loads(sys.argv[1]))
    print(json.dumps(measure(case)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
