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
else is reading). GB/s is the file's size over the time. With --fresh, two more baselines say
what any copy of the file costs on this machine: "fresh pages" faults in a file-sized buffer of
fresh anonymous memory (MADV_POPULATE_WRITE) and nothing else; "fresh read" is the plain read
into such a buffer instead of a reused one. On a VM that hands freed memory back to its host
(virtio-balloon free page reporting), the first touch of fresh memory costs a host fault too.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from warmload.bench import run_worker

READ_CHUNK_BYTES = 64 << 20
MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault pages in writable, without writing them
# What copying the file into fresh memory costs on this machine, apart from warmload: faulting in
# a file-sized fresh buffer alone, and one plain sequential read into such a buffer.
FRESH_CASES = ("fresh pages", "fresh read")
FORWARD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class LoadCase:
    path: str
    mode: str  # a load mode, "plain read", or one of FRESH_CASES
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


def fresh_pages(nbytes: int) -> memoryview:
    """A buffer of `nbytes` fresh anonymous pages (the loader's new_buffer), all faulted in."""
    from warmload.formats.source import new_buffer

    buf = new_buffer(nbytes)
    try:
        buf.obj.madvise(MADV_POPULATE_WRITE)
    except (AttributeError, OSError):  # older kernel: touch one byte per page
        page = mmap.PAGESIZE
        for start in range(0, nbytes, page):
            buf[start] = 0
    return buf


def fresh_read(path: str) -> int:
    """One reader, sequential 64 MiB reads straight into a fresh file-sized buffer; bytes."""
    from warmload.formats.source import new_buffer

    buf = new_buffer(os.stat(path).st_size)
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        while n := os.readv(fd, [buf[total : total + READ_CHUNK_BYTES]]):
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

    baselines = {
        "plain read": plain_read,
        "fresh pages": lambda path: len(fresh_pages(os.stat(path).st_size)),
        "fresh read": fresh_read,
    }
    if case.mode in baselines:
        started = time.perf_counter()
        baselines[case.mode](case.path)
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
    fresh: bool = False,
) -> list[LoadRow]:
    """Rows of plain read and every mode, per model and cache state (see the docstring); with
    `fresh`, also the FRESH_CASES baselines. The cases of one model and cache state take turns,
    one run each per round, so a slower minute or the memory left by the case before weighs on
    all of them alike."""
    rows = []
    for model in models:
        for cache in caches:
            cold = cache == "cold"
            cases = [LoadCase(str(model), "plain read", cold)]
            cases += [LoadCase(str(model), m, cold) for m in FRESH_CASES if fresh]
            cases += [LoadCase(str(model), m, cold, lazy, forward, source_only) for m in modes]
            cases += [LoadCase(str(model), "mmap", cold, warmup=w) for w in warmups]
            group = [new_row(case) for case in cases]
            for _ in range(repetitions):
                for case, row in zip(cases, group):
                    if not row.skipped:
                        add_run(row, run_case(case))
            for row in group:
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def new_row(case: LoadCase) -> LoadRow:
    """The empty row of a case, marked skipped when RAM cannot hold it."""
    name = case.mode + (" lazy" if case.lazy else "") + (" source" if case.source_only else "")
    name = f"warm-up {case.warmup}" if case.warmup else name
    path = Path(case.path)
    row = LoadRow(path.name, path.stat().st_size, name, "cold" if case.cold else "warm")
    if case.mode in FRESH_CASES:
        need = row.size_bytes
    elif case.mode != "plain read" and not case.source_only and not case.warmup:
        need = memory_needed(case.path, case.mode, case.lazy, case.forward)
    else:
        need = 0
    if need > 0.8 * available_bytes():
        row.skipped = f"needs {need / 1e9:.1f} GB, {available_bytes() / 1e9:.1f} free"
    return row


def add_run(row: LoadRow, result: dict) -> None:
    row.ready_s.append(result["ready_s"])
    if "first_s" in result:
        row.first_s.append(result["first_s"])
    row.peak_rss_bytes = max(row.peak_rss_bytes, result["peak_rss_bytes"])


def measure_row(case: LoadCase, repetitions: int) -> LoadRow:
    """`repetitions` fresh-process runs of one case (skipped when RAM cannot hold it)."""
    row = new_row(case)
    for _ in range(repetitions if not row.skipped else 0):
        add_run(row, run_case(case))
    return row


def main() -> int:
    case = LoadCase(**json.loads(sys.argv[1]))
    print(json.dumps(measure(case)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
