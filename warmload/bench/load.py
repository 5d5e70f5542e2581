"""`warmload bench --load`: time to ready per load mode, warm and cold, next to a plain read.

Each case runs in a fresh process (`python -m warmload.bench.load CASE_JSON`) so peak RSS and
the page cache state belong to it: open the checkpoint, load_model (weights only: synthetic
files have no tokenizer), and optionally run one forward pass of a few tokens (the first
answer; with --lazy this is where the weights arrive). --source-only times the source stage
alone: every tensor's bytes delivered by the load mode's ByteSource, no model, no transform;
--warmups times warm() of each given warm-up mode on the mmap-opened file (loader/warm.py).
The baseline is the same file read once with large sequential reads into one reused buffer,
in the same state (warm: resident in the page cache; cold: evicted with
posix_fadvise(POSIX_FADV_DONTNEED) first, which needs a private copy of the file that nobody
else is reading). GB/s is the file's size over the time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from warmload.bench import run_worker

READ_CHUNK_BYTES = 64 << 20
FORWARD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class LoadCase:
    path: str
    mode: str  # a load mode, or "plain read"
    cold: bool
    lazy: bool = False
    forward: bool = False  # also time one forward pass (first answer)
    source_only: bool = False  # only deliver every tensor's bytes (no model, no transform)
    warmup: str = ""  # only run this warm-up mode on the opened file (loader/warm.py)


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


def deliver_bytes(path: str, mode: str) -> int:
    """The source stage alone: every tensor's bytes from the checkpoint's ByteSource in file
    order, each copied once into a reused buffer (so mmap pages are really read); bytes."""
    from warmload.formats.open import open_checkpoint

    scratch = bytearray(READ_CHUNK_BYTES)
    total = 0
    with open_checkpoint(path, load_mode=mode) as ckpt:
        for info in sorted(ckpt.tensors.values(), key=lambda t: (t.file, t.offset)):
            view = ckpt.tensor_bytes(info.name)
            for start in range(0, len(view), READ_CHUNK_BYTES):
                chunk = view[start : start + READ_CHUNK_BYTES]
                scratch[: len(chunk)] = chunk
            total += len(view)
            del view
    return total


def measure(case: LoadCase) -> dict:
    """Run one case in this process; {"ready_s", "first_s", "peak_rss_bytes", "stats"}."""
    from warmload.memstats import peak_rss_bytes

    if case.mode == "plain read":
        started = time.perf_counter()
        plain_read(case.path)
        return {"ready_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}
    if case.warmup:
        from warmload.formats.open import open_checkpoint
        from warmload.loader.warm import warm

        started = time.perf_counter()
        with open_checkpoint(case.path, load_mode=case.mode) as ckpt:
            warm(ckpt, case.warmup)
        return {"ready_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}
    if case.source_only:
        started = time.perf_counter()
        deliver_bytes(case.path, case.mode)
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
    return run_worker("warmload.bench.load", case, f"load bench {case}:", timeout_s)


def memory_needed(path: str, mode: str, lazy: bool, forward: bool) -> int:
    """Bytes of RAM a case needs: the weights as loaded (packed matrices keep their file bytes,
    the rest becomes float32; nothing when lazy without a forward pass), plus the file itself
    for "memory" mode."""
    from warmload.formats.open import open_checkpoint
    from warmload.quant.matmul import has_kernel

    with open_checkpoint(path) as ckpt:
        tensors = list(ckpt.tensors.values())
    packed = [t for t in tensors if len(t.shape) == 2 and has_kernel(t.ggml_type)]
    floats = [t for t in tensors if t not in packed]
    params = sum(t.nbytes for t in packed) + 4 * sum(t.n_elements for t in floats)
    need = 0 if lazy and not forward else params
    return need + (sum(t.nbytes for t in tensors) if mode == "memory" else 0)


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
    source_only: bool = False,
    on_row: Callable[[LoadRow], None] | None = None,
    warmups: Sequence[str] = (),
) -> list[LoadRow]:
    """Rows of plain read and every mode, per model and cache state (see the docstring)."""
    rows = []
    for model in models:
        for cache in caches:
            cases = [LoadCase(str(model), "plain read", cache == "cold")]
            cases += [
                LoadCase(str(model), m, cache == "cold", lazy, forward, source_only) for m in modes
            ]
            cases += [LoadCase(str(model), "mmap", cache == "cold", warmup=w) for w in warmups]
            for case in cases:
                rows.append(measure_row(case, repetitions))
                if on_row is not None:
                    on_row(rows[-1])
    return rows


def measure_row(case: LoadCase, repetitions: int) -> LoadRow:
    """`repetitions` fresh-process runs of one case (skipped when RAM cannot hold it)."""
    name = case.mode + (" lazy" if case.lazy else "") + (" source" if case.source_only else "")
    name = f"warm-up {case.warmup}" if case.warmup else name
    path = Path(case.path)
    row = LoadRow(path.name, path.stat().st_size, name, "cold" if case.cold else "warm")
    if case.mode != "plain read" and not case.source_only and not case.warmup:
        need = memory_needed(case.path, case.mode, case.lazy, case.forward)
        if need > 0.8 * available_bytes():
            row.skipped = f"needs {need / 1e9:.1f} GB, {available_bytes() / 1e9:.1f} free"
            return row
    for _ in range(repetitions):
        result = run_case(case)
        row.ready_s.append(result["ready_s"])
        if "first_s" in result:
            row.first_s.append(result["first_s"])
        row.peak_rss_bytes = max(row.peak_rss_bytes, result["peak_rss_bytes"])
    return row


def main() -> int:
    case = LoadCase(**json.loads(sys.argv[1]))
    print(json.dumps(measure(case)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
