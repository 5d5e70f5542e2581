"""Page pre-faulting (warm-up), mlock and page-cache residency of a checkpoint's files.

Warm-up modes (LoadConfig.warmup):

* "none"      nothing.
* "willneed"  madvise(MADV_WILLNEED) on the mapping (posix_fadvise(WILLNEED) without one): the
              kernel starts asynchronous readahead and returns at once.
* "populate"  madvise(MADV_POPULATE_READ) (Linux 5.14+): the kernel reads every page and maps
              it, no per-page faults; falls back to "read" where the kernel says EINVAL.
* "read"      parallel read-through: os.preadv of the whole file(s) into scratch buffers on
              two threads (the GIL is released during the read), filling the page cache.
* "auto"      "populate" for an mmap source, "read" for a "read" source, nothing for a
              "memory" source (its bytes are already in the process).

Nothing here is fatal: a failed warm-up or mlock is logged and the load goes on, and where the OS
lacks a call (warmload.oscalls: no madvise/mlock/mincore on Windows, no posix_fadvise or
MADV_POPULATE_READ on macOS) the warm-up reads through instead. References:
madvise(2), mincore(2), mlock(2); llama.cpp's llama_mmap (prefetch via posix_madvise WILLNEED)
and llama_mlock (the RLIMIT_MEMLOCK hint).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from warmload import oscalls
from warmload.formats.checkpoint import Checkpoint

log = logging.getLogger(__name__)

MADV_WILLNEED = 3
MADV_POPULATE_READ = 22  # Linux 5.14+
_READ_CHUNK_BYTES = 8 << 20
_READ_THREADS = 2
PAGE_BYTES = mmap.PAGESIZE
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def checkpoint_files(checkpoint: Checkpoint) -> list[str]:
    """The files holding the checkpoint's tensors (one for GGUF, the shards for SafeTensors)."""
    files = sorted({t.file for t in checkpoint.tensors.values()})
    return files or [str(checkpoint.path)]


def _mappings(checkpoint: Checkpoint) -> list[memoryview] | None:
    """The source's whole-file mappings, or None when the source is not mmap-based."""
    source = checkpoint.source
    if source is None or getattr(source, "mode", "") != "mmap":
        return None
    views = [source.mapping(f) for f in checkpoint_files(checkpoint)]
    return [v for v in views if len(v)]


def _address(view: memoryview) -> int:
    """Start address of a (read-only) buffer; numpy exposes it without copying."""
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def _madvise(view: memoryview, advice: int) -> int | None:
    """madvise on the whole view; 0 or the errno, None where the OS has no madvise."""
    return oscalls.madvise(_address(view), len(view), advice)


def read_through(path: str, threads: int = _READ_THREADS) -> int:
    """Read the whole file once (pread into scratch buffers, `threads` in parallel); bytes read."""
    if not oscalls.has_pread():
        threads = 1  # lseek + read on one shared descriptor: one reader
    fd = os.open(path, _OPEN_FLAGS)
    try:
        size = os.fstat(fd).st_size
        offsets = range(0, size, _READ_CHUNK_BYTES)
        local = threading.local()

        def read_chunk(offset: int) -> int:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = bytearray(_READ_CHUNK_BYTES)
            want = min(_READ_CHUNK_BYTES, size - offset)
            return oscalls.pread_into(fd, memoryview(buf)[:want], offset)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(read_chunk, offsets))
    finally:
        os.close(fd)


def _warm_file(path: str, view: memoryview | None, mode: str) -> int:
    """Warm one file in `mode` (not "auto"/"none"); returns the bytes warmed."""
    if mode == "willneed":
        if view is not None:
            err = _madvise(view, MADV_WILLNEED)
            if err:
                raise OSError(err, f"madvise(MADV_WILLNEED): {os.strerror(err)}")
            if err == 0:
                return len(view)
        fd = os.open(path, _OPEN_FLAGS)
        try:
            size = os.fstat(fd).st_size
            if oscalls.fadvise_willneed(fd, size):
                return size
        finally:
            os.close(fd)
        return read_through(path)  # no hint to give: the bytes are read now instead
    if mode == "populate" and view is not None:
        if not sys.platform.startswith("linux"):
            oscalls.report_missing("MADV_POPULATE_READ", "populate warm-up reads through")
            return read_through(path)
        err = _madvise(view, MADV_POPULATE_READ)
        if err == 0:
            return len(view)
        if err is not None:
            log.info("%s: MADV_POPULATE_READ failed (%s); reading through", path, os.strerror(err))
    return read_through(path)


def resolve_mode(checkpoint: Checkpoint, mode: str) -> str:
    """The concrete mode "auto" stands for with this checkpoint's source."""
    if mode != "auto":
        return mode
    source_mode = getattr(checkpoint.source, "mode", "mmap")
    return {"mmap": "populate", "read": "read"}.get(source_mode, "none")


def warm(checkpoint: Checkpoint, mode: str) -> tuple[float, int]:
    """Pre-fault the checkpoint's bytes in `mode`; returns (seconds, bytes warmed). Never raises
    on an OS failure: it is logged and (seconds, bytes warmed so far) returned."""
    started = time.perf_counter()
    mode = resolve_mode(checkpoint, mode)
    warmed = 0
    if mode == "none":
        return 0.0, 0
    mappings = _mappings(checkpoint)
    files = checkpoint_files(checkpoint)
    try:
        if mappings is not None:
            for path, view in zip(files, mappings):
                warmed += _warm_file(path, view, mode)
        else:
            for path in files:
                warmed += _warm_file(path, None, mode)
    except OSError as e:
        log.warning("%s: warm-up (%s) failed, loading goes on: %s", checkpoint.path, mode, e)
    seconds = time.perf_counter() - started
    log.info("%s: warm-up %s: %.1f MB in %.3f s", checkpoint.path, mode, warmed / 1e6, seconds)
    return seconds, warmed


def warm_in_background(
    checkpoint: Checkpoint, mode: str, on_done: Callable[[float, int], None] | None = None
) -> threading.Thread:
    """warm() on a daemon thread; `on_done(seconds, nbytes)` is called when it finishes."""

    def run() -> None:
        try:
            seconds, nbytes = warm(checkpoint, mode)
        except Exception:  # the checkpoint was closed meanwhile, or similar: never fatal
            log.warning("%s: background warm-up failed", checkpoint.path, exc_info=True)
            return
        if on_done is not None:
            on_done(seconds, nbytes)

    thread = threading.Thread(target=run, name="warmload-warmup", daemon=True)
    thread.start()
    return thread


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes (-1 when unlimited; None where the OS has no rlimits)."""
    return oscalls.memlock_limit()


def _mlock_call(view: memoryview) -> int | None:
    """mlock(2) on the view; 0 or the errno, None where the OS has no mlock."""
    return oscalls.mlock(_address(view), len(view))


def lock(checkpoint: Checkpoint) -> int:
    """mlock the checkpoint's mappings (pages stay resident, read in now); bytes locked. A
    failure (RLIMIT_MEMLOCK too low, no mapping) is logged with the numbers and the load goes
    on unlocked."""
    mappings = _mappings(checkpoint)
    if mappings is None:
        log.warning(
            "%s: mlock needs load_mode='mmap' (got %r); going on unlocked",
            checkpoint.path,
            getattr(checkpoint.source, "mode", None),
        )
        return 0
    locked = 0
    for view in mappings:
        err = _mlock_call(view)
        if err is None:  # logged once by oscalls
            return locked
        if err:
            limit = memlock_limit()
            shown = {None: "unknown", -1: "unlimited"}.get(limit, f"{limit} bytes")
            log.warning(
                "%s: mlock of %d bytes failed (%s); RLIMIT_MEMLOCK is %s. Raise it with "
                "`ulimit -l unlimited` (or a memlock line in /etc/security/limits.conf; "
                "docker: --ulimit memlock=-1). Going on unlocked.",
                checkpoint.path,
                len(view),
                os.strerror(err),
                shown,
            )
            return locked
        locked += len(view)
    return locked


def file_residency(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(resident bytes, file bytes) of a file in the page cache, by mincore on a fresh mapping
    (mapping faults nothing in; mincore reports the page cache for file mappings)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0, 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pages = (size + PAGE_BYTES - 1) // PAGE_BYTES
            vec = np.zeros(pages, dtype=np.uint8)
            view = memoryview(mm)
            try:
                err = oscalls.mincore(_address(view), size, vec.ctypes.data)
            finally:
                view.release()
            if err is None:
                raise OSError(errno.ENOSYS, f"{path}: no mincore on this system")
            if err:
                raise OSError(err, f"{path}: mincore: {os.strerror(err)}")
    resident_pages = int(np.count_nonzero(vec & 1))
    return min(resident_pages * PAGE_BYTES, size), size


def residency(checkpoint: Checkpoint | Any) -> float:
    """Fraction (0..1) of the checkpoint's file bytes resident in the page cache."""
    resident = total = 0
    for path in checkpoint_files(checkpoint):
        r, t = file_residency(path)
        resident += r
        total += t
    return resident / total if total else 1.0
