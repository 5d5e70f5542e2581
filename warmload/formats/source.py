"""Byte sources: how tensor bytes arrive from the file(s), one class per load mode.

* "mmap"   maps each file read-only on first use; views are zero-copy and read-only, pages are
           read by the kernel when touched (RSS hardly grows on open).
* "memory" reads each whole file into one private buffer (readinto, 64 MiB chunks, on a
           background thread from first use; a view waits for its own bytes only); views
           alias that buffer and are writable; no file mapping is left.
* "read"   preads each requested tensor into its own new, writable buffer.

One source serves any number of files (SafeTensors shards); files are opened lazily and each
view is bounds-checked against the file's size. close() is always safe: a mapping or buffer
that still has views alive is released by Python when its last view goes (an mmap with exported
views cannot be closed, so we drop our reference instead of failing). After close(), view()
raises CheckpointError. Reference: Python's mmap and os.preadv; llama.cpp's llama_mmap /
llama_file play the same roles.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any

import numpy as np

from warmload.config import LOAD_MODES
from warmload.errors import CheckpointError, RequestError

_CHUNK_BYTES = 64 << 20


class ByteSource:
    """Base: lazily opened per-file handles, bounds checks, close(). Subclasses fill in _open."""

    mode = ""

    def __init__(self) -> None:
        self._handles: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _open(self, file: str) -> tuple[Any, int]:
        raise NotImplementedError

    def _handle(self, file: str) -> Any:
        handle = self._handles.get(file)
        if handle is not None:
            return handle
        with self._lock:
            if self._closed:
                raise CheckpointError(f"{file}: the checkpoint was closed; reopen it to read")
            if file not in self._handles:
                try:
                    self._handles[file], self._sizes[file] = self._open(file)
                except FileNotFoundError:
                    raise CheckpointError(f"{file}: no such file (moved or deleted?)") from None
            return self._handles[file]

    def _check(self, file: str, offset: int, nbytes: int) -> None:
        size = self._sizes[file]
        if offset < 0 or nbytes < 0 or offset + nbytes > size:
            raise CheckpointError(
                f"{file}: bytes {offset}..{offset + nbytes} asked for, but the file has {size} "
                f"bytes (changed since it was opened?)"
            )

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        """nbytes bytes of `file` from `offset`, as a 1-D unsigned-byte memoryview."""
        raise NotImplementedError

    def file_size(self, file: str) -> int:
        self._handle(file)
        return self._sizes[file]

    def close(self) -> None:
        """Release every file; views handed out stay valid until they are dropped."""
        with self._lock:
            self._closed = True
        self.release()

    def release(self) -> None:
        """Drop every mapping / buffer / descriptor, but stay usable: the next view reopens the
        file. After a load that copied every tensor this gives their memory back (a mapping or
        buffer that views still use lives on until the last view goes)."""
        with self._lock:
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            self._release(handle)

    def _release(self, handle: Any) -> None:
        pass

    def __enter__(self) -> ByteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MmapSource(ByteSource):
    """Read-only mappings; views are zero-copy."""

    mode = "mmap"

    def _open(self, file: str) -> tuple[Any, int]:
        with open(file, "rb") as f:  # the mapping keeps its own descriptor
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return memoryview(b""), 0
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mm), size

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        whole = self._handle(file)
        self._check(file, offset, nbytes)
        return whole[offset : offset + nbytes]

    def mapping(self, file: str) -> memoryview:
        """The whole file's mapping (for madvise-style warm-up by the loader)."""
        return self._handle(file)[:]

    def _release(self, handle: Any) -> None:
        mm = handle.obj
        try:
            handle.release()  # views sliced from it hold their own export of the mmap
            if isinstance(mm, mmap.mmap):
                mm.close()
        except BufferError:
            pass  # views are alive; the mapping is unmapped when the last one goes


class _Fill:
    """A file being read into its buffer by a background thread: how far it got, or why not."""

    def __init__(self, file: str, whole: memoryview) -> None:
        self.file, self.whole = file, whole
        self.filled = 0
        self.error: CheckpointError | None = None
        self.stop = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="warmload-fill", daemon=True)

    def _run(self) -> None:
        size = len(self.whole)
        try:
            with open(self.file, "rb", buffering=0) as f:
                while self.filled < size and not self.stop:
                    n = f.readinto(self.whole[self.filled : self.filled + _CHUNK_BYTES])
                    if not n:
                        raise CheckpointError(
                            f"{self.file}: read {self.filled} of {size} bytes, then the file "
                            f"ended (truncated while reading?)"
                        )
                    with self.cond:
                        self.filled += n
                        self.cond.notify_all()
        except OSError as e:
            self._fail(CheckpointError(f"{self.file}: reading failed: {e}"))
        except CheckpointError as e:
            self._fail(e)

    def _fail(self, error: CheckpointError) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()

    def wait_for(self, end: int) -> None:
        """Block until bytes [0, end) are in the buffer; raise the reader's error if any."""
        with self.cond:
            while self.filled < end and self.error is None:
                self.cond.wait()
            if self.filled < end:
                assert self.error is not None
                raise self.error


class MemorySource(ByteSource):
    """Each file read whole into one private buffer; views are writable and alias it.

    The read starts on first use and runs on a background thread, front to back; a view
    waits only until its own bytes are in, so tensors are transformed while the rest of the
    file is still arriving (the load costs about max(read, transform), not their sum)."""

    mode = "memory"

    def _open(self, file: str) -> tuple[Any, int]:
        size = os.stat(file).st_size
        buf = np.empty(size, dtype=np.uint8)  # not zero-filled: pages are touched once
        fill = _Fill(file, memoryview(buf))
        fill.thread.start()
        return fill, size

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        fill = self._handle(file)
        self._check(file, offset, nbytes)
        fill.wait_for(offset + nbytes)
        return fill.whole[offset : offset + nbytes]

    def wait(self) -> None:
        """Block until every opened file is wholly in memory (or raise its read error)."""
        for fill in list(self._handles.values()):
            fill.wait_for(len(fill.whole))

    def _release(self, handle: Any) -> None:
        handle.stop = True  # views keep the buffer alive; the reader ends after its chunk
        handle.thread.join()


class ReadSource(ByteSource):
    """pread of each requested range into a new buffer; thread-safe (no shared position)."""

    mode = "read"

    def _open(self, file: str) -> tuple[Any, int]:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return fd, os.fstat(fd).st_size

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        fd = self._handle(file)
        self._check(file, offset, nbytes)
        out = memoryview(np.empty(nbytes, dtype=np.uint8))
        got = 0
        while got < nbytes:
            n = _pread_into(fd, out[got:], offset + got)
            if n == 0:
                raise CheckpointError(
                    f"{file}: read {got} of {nbytes} bytes at byte {offset}, then the file "
                    f"ended (truncated while reading?)"
                )
            got += n
        return out

    def _release(self, handle: Any) -> None:
        os.close(handle)


def _pread_into(fd: int, out: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [out], offset)
    data = os.pread(fd, len(out), offset)
    out[: len(data)] = data
    return len(data)


SOURCES: dict[str, type[ByteSource]] = {
    "mmap": MmapSource,
    "memory": MemorySource,
    "read": ReadSource,
}


def open_source(load_mode: str = "mmap") -> ByteSource:
    """A new, empty ByteSource for `load_mode` ("mmap", "memory" or "read")."""
    cls = SOURCES.get(load_mode)
    if cls is None:
        raise RequestError(
            f"load_mode must be one of {', '.join(LOAD_MODES)}, not {load_mode!r}", "load_mode"
        )
    return cls()
