"""Byte sources: how tensor bytes arrive from the file(s), one class per load mode.

* "mmap"   maps each file read-only on first use; views are zero-copy and read-only, pages are
           read by the kernel when touched (RSS hardly grows on open).
* "memory" reads each whole file into one private buffer (pread into fresh anonymous memory,
           64 MiB pieces, by two background threads from first use; a view waits for its own
           bytes only); views alias that buffer and are writable; no file mapping is left.
* "read"   preads each requested tensor into its own new, writable buffer (big ranges by two
           threads).

One source serves any number of files (SafeTensors shards); files are opened lazily and each
view is bounds-checked against the file's size. close() is always safe: a mapping or buffer
that still has views alive is released by Python when its last view goes (an mmap with exported
views cannot be closed, so we drop our reference instead of failing). After close(), view()
raises CheckpointError. Reference: Python's mmap and os.preadv; llama.cpp's llama_mmap /
llama_file play the same roles.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
from typing import Any

from warmload import oscalls
from warmload.config import LOAD_MODES
from warmload.errors import CheckpointError, RequestError

_CHUNK_BYTES = 64 << 20  # per pread; big enough that syscalls cost nothing
FILL_READERS = 2  # memory mode: threads filling a file's buffer
READ_SPLIT = 2  # read mode: threads reading one range of several pieces
# O_BINARY: Windows opens in text mode without it (CRLF translation of the weights)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


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


class _ChunkedRead:
    """Bytes [offset, offset + len(out)) of `file` read into `out` in _CHUNK_BYTES pieces by up to
    `readers` threads, each taking the next piece in file order (so the filled prefix grows front
    to back); waiters block until their prefix is in. Two readers copy from the page cache and
    fault in fresh pages on two cores at once, where one reader leaves the second core idle."""

    def __init__(self, file: str, fd: int, offset: int, out: memoryview, readers: int) -> None:
        self.file, self.fd, self.offset, self.out = file, fd, offset, out
        self.chunk_bytes = _CHUNK_BYTES
        self.n_chunks = -(-len(out) // self.chunk_bytes)
        self.done = bytearray(self.n_chunks)
        self.prefix = 0  # chunks [0, prefix) are in
        self.errors: dict[int, CheckpointError] = {}
        self.stop = False
        self.cond = threading.Condition()
        self._claims = itertools.count()  # next() is atomic under the GIL
        n_threads = max(1, min(readers, self.n_chunks))
        self.threads = [
            threading.Thread(target=self._run, args=(i > 0,), name="warmload-read", daemon=True)
            for i in range(n_threads)
        ]

    def start(self) -> None:
        """Read on background threads; wait_for() blocks for a prefix."""
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        """Read on this thread and the helpers; raise the first piece's error, if any."""
        for thread in self.threads[1:]:
            thread.start()
        self._run(False)
        for thread in self.threads[1:]:
            thread.join()
        self.wait_for(len(self.out))

    def _run(self, own_fd: bool) -> None:
        """Claim and read pieces until none is left. A helper reads through its own descriptor,
        so each reader's readahead state sees its own (forward) stream."""
        try:
            fd = reopen(self.fd, self.file) if own_fd else self.fd
        except OSError:
            return  # the first reader (our descriptor) claims the pieces this one would have
        try:
            while not self.stop:
                i = next(self._claims)
                if i >= self.n_chunks:
                    return
                try:
                    self._read_chunk(fd, i)
                except OSError as e:
                    self._finish(i, CheckpointError(f"{self.file}: reading failed: {e}"))
                    return
                except CheckpointError as e:
                    self._finish(i, e)
                    return
                self._finish(i, None)
        finally:
            if own_fd:
                os.close(fd)

    def _read_chunk(self, fd: int, i: int) -> None:
        got, end = i * self.chunk_bytes, min(len(self.out), (i + 1) * self.chunk_bytes)
        while got < end:
            n = _pread_into(fd, self.out[got:end], self.offset + got)
            if n == 0:
                where = f" at byte {self.offset}" if self.offset else ""
                raise CheckpointError(
                    f"{self.file}: read {got} of {len(self.out)} bytes{where}, then the file "
                    f"ended (truncated while reading?)"
                )
            got += n

    def _finish(self, i: int, error: CheckpointError | None) -> None:
        with self.cond:
            if error is None:
                self.done[i] = 1
                while self.prefix < self.n_chunks and self.done[self.prefix]:
                    self.prefix += 1
            else:
                self.errors[i] = error
                self.stop = True  # the pieces already claimed finish; no new ones start
            self.cond.notify_all()

    def wait_for(self, end: int) -> None:
        """Block until bytes [0, end) of `out` are in; raise the error that stops them, if any.
        Pieces are claimed in order, so every piece before a failed one completes or fails."""
        need = -(-end // self.chunk_bytes)
        with self.cond:
            while self.prefix < need and self.prefix not in self.errors:
                self.cond.wait()
            if self.prefix < need:
                raise self.errors[self.prefix]

    def cancel(self) -> None:
        """Stop after the pieces being read; later waiters get a CheckpointError."""
        self.stop = True
        for thread in self.threads:
            if thread.is_alive():
                thread.join()
        with self.cond:
            if self.prefix < self.n_chunks and self.prefix not in self.errors:
                self.errors[self.prefix] = CheckpointError(
                    f"{self.file}: the checkpoint was closed while it was being read"
                )
            self.cond.notify_all()


class MemorySource(ByteSource):
    """Each file read whole into one private buffer; views are writable and alias it.

    The read starts on first use and runs on FILL_READERS background threads, front to back;
    a view waits only until its own bytes are in, so tensors are transformed while the rest of
    the file is still arriving (the load costs about max(read, transform), not their sum)."""

    mode = "memory"

    def _open(self, file: str) -> tuple[Any, int]:
        size = os.stat(file).st_size
        fd = os.open(file, _OPEN_FLAGS)
        try:
            read = _ChunkedRead(file, fd, 0, new_buffer(size), FILL_READERS)
            read.start()
        except BaseException:
            os.close(fd)
            raise
        return read, size

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        read = self._handle(file)
        self._check(file, offset, nbytes)
        read.wait_for(offset + nbytes)
        return read.out[offset : offset + nbytes]

    def wait(self) -> None:
        """Block until every opened file is wholly in memory (or raise its read error)."""
        for read in list(self._handles.values()):
            read.wait_for(len(read.out))

    def _release(self, handle: Any) -> None:
        handle.cancel()  # views keep the buffer alive; the readers end after their pieces
        os.close(handle.fd)


class ReadSource(ByteSource):
    """pread of each requested range into a new buffer; thread-safe (no shared position). Each
    thread reads through its own descriptor (the loader's workers read different tensors at
    once; one descriptor's readahead state would see their reads as one stream jumping back
    and forth), and a range of several pieces is read by READ_SPLIT threads."""

    mode = "read"

    def _open(self, file: str) -> tuple[Any, int]:
        descriptors = _Descriptors(file)
        return descriptors, os.fstat(descriptors.fd()).st_size

    def view(self, file: str, offset: int, nbytes: int) -> memoryview:
        fd = self._handle(file).fd()
        self._check(file, offset, nbytes)
        out = new_buffer(nbytes)
        _ChunkedRead(file, fd, offset, out, READ_SPLIT).run()
        return out

    def _release(self, handle: Any) -> None:
        handle.close()


class _Descriptors:
    """One read-only descriptor of a file per calling thread, opened on its first use."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._first = os.open(file, _OPEN_FLAGS)
        self._fds: dict[int, int] = {threading.get_ident(): self._first}
        self._lock = threading.Lock()

    def fd(self) -> int:
        me = threading.get_ident()
        fd = self._fds.get(me)
        if fd is None:
            try:
                fd = reopen(self._first, self.file)
            except OSError as e:
                raise CheckpointError(f"{self.file}: cannot reopen for reading: {e}") from None
            with self._lock:
                self._fds[me] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def reopen(fd: int, file: str) -> int:
    """A new descriptor (own file position and readahead state) of the file open as `fd`:
    through /proc/self/fd, so it is the same inode even if the path was since replaced; by
    path where there is no /proc. OSError if neither opens."""
    try:
        return os.open(f"/proc/self/fd/{fd}", _OPEN_FLAGS)
    except OSError:
        return os.open(file, _OPEN_FLAGS)


def new_buffer(nbytes: int) -> memoryview:
    """A writable, page-aligned buffer of fresh private anonymous memory (not zero-filled by us:
    the kernel hands out zeroed pages on first touch, which the reads are). Its pages are
    faulted in by whoever writes them first, so the readers fault them in parallel."""
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview(oscalls.anonymous_map(nbytes))


def _pread_into(fd: int, out: memoryview, offset: int) -> int:
    return oscalls.pread_into(fd, out, offset)  # each thread has its own fd (_Descriptors)


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
