"""The converted-weight cache: GGUF files quantized at load (quantize_at_load.py), kept under
cache_dir()/quantized, each with a JSON record that says what it was made from.

An entry is `<key>.gguf` + `<key>.json` (+ `<key>.lock` while anyone builds it). The key is a
hash of the source's resolved path, the target type and the quantizer version; the record
holds the source's identity (size, mtime_ns and a SHA-256 of its header: GGUF metadata and
tensor table, or a folder's JSON files and SafeTensors headers) and the entry's own size,
header hash and tail hash. An entry is used only when all of them match, so a source that
changed, a truncated file or a flipped header byte is a miss that the caller rebuilds in place.
Bytes in the middle of the tensor data are not re-hashed on each load (that would read the
whole file); the record keeps the file's full SHA-256 for `sha256sum`-style checks.

Writers hold an exclusive lock on `<key>.lock` (flock; msvcrt.locking on Windows) and write
both files with formats.gguf_write.atomic_output (temp + fsync + rename). The cache is bounded
by bytes: after a build the least recently used entries (record mtime, touched on every hit)
go, except entries another process is building. Stdlib only, plus formats for GGUF headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from warmload.config import QUANTIZE_CACHE_BYTES, cache_dir
from warmload.formats.gguf import read_gguf_header
from warmload.formats.gguf_write import atomic_output

try:  # one of the two exists on every supported OS
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CACHE_NAME = "quantized"
RECORD_FORMAT = 1
TAIL_NBYTES = 1 << 16
DEFAULT_MAX_BYTES = QUANTIZE_CACHE_BYTES  # LoadConfig.quantize_cache_bytes


def cache_root() -> Path:
    return cache_dir() / CACHE_NAME


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What must not change for an entry to stay valid."""

    path: str
    nbytes: int
    mtime_ns: int
    header_nbytes: int  # GGUF: bytes before the tensor data (0 for a folder)
    header_sha256: str


def _sha256_range(path: Path, start: int, nbytes: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = nbytes
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        return head + f.read(min(n, 100 << 20))


def source_identity(path: Path, header_nbytes: int | None = None) -> SourceIdentity:
    """The identity of a GGUF file (stat + a hash of its header: metadata and tensor table,
    `header_nbytes` long, else parsed to find its length) or of a model folder (every file's
    name, size and mtime; JSON files and SafeTensors headers hashed)."""
    path = path.resolve()
    if not path.is_dir():
        st = path.stat()
        if header_nbytes is None:
            header_nbytes = read_gguf_header(path).data_offset
        digest = _sha256_range(path, 0, header_nbytes)
        return SourceIdentity(str(path), st.st_size, st.st_mtime_ns, header_nbytes, digest)
    h = hashlib.sha256()
    total = latest = 0
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        st = p.stat()
        total, latest = total + st.st_size, max(latest, st.st_mtime_ns)
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if p.suffix == ".json":
            h.update(p.read_bytes())
        elif p.suffix == ".safetensors":
            h.update(_safetensors_header(p))
    return SourceIdentity(str(path), total, latest, 0, h.hexdigest())


@dataclass(frozen=True, slots=True)
class Entry:
    """One cache entry's files."""

    root: Path
    key: str

    @property
    def gguf(self) -> Path:
        return self.root / f"{self.key}.gguf"

    @property
    def record(self) -> Path:
        return self.root / f"{self.key}.json"

    @property
    def lock_file(self) -> Path:
        return self.root / f"{self.key}.lock"


def entry_for(root: Path, source: Path, qtype: str, version: str) -> Entry:
    text = json.dumps([str(source.resolve()), qtype, version])
    return Entry(root, hashlib.sha256(text.encode()).hexdigest()[:32])


def _fingerprint(gguf: Path, header_nbytes: int | None = None) -> dict[str, Any]:
    """Size, header hash and tail hash of an entry's GGUF file (its header parsed for its
    length unless given)."""
    nbytes = gguf.stat().st_size
    if header_nbytes is None:
        header_nbytes = read_gguf_header(gguf).data_offset
    tail = min(TAIL_NBYTES, nbytes)
    return {
        "nbytes": nbytes,
        "header_nbytes": header_nbytes,
        "header_sha256": _sha256_range(gguf, 0, min(header_nbytes, nbytes)),
        "tail_sha256": _sha256_range(gguf, nbytes - tail, tail),
    }


def write_record(entry: Entry, source: SourceIdentity, qtype: str, version: str,
                 sha256: str) -> None:  # fmt: skip
    """Describe a freshly written entry (atomically): the caller holds its lock."""
    record = {
        "format": RECORD_FORMAT, "qtype": qtype, "quantizer_version": version,
        "source": asdict(source), "sha256": sha256, "created": time.time(),
        **_fingerprint(entry.gguf),
    }  # fmt: skip
    with atomic_output(entry.record) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")


def read_record(entry: Entry) -> dict[str, Any] | None:
    try:
        data = json.loads(entry.record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_entry(entry: Entry, source: Path, qtype: str, version: str) -> str | None:
    """None when the entry is complete and made from `source` as it is now; else what is wrong
    ("missing", or a sentence for the warning). Reads no header in full: the record gives the
    lengths to hash (a few MB for a model with a large vocabulary), so a hit costs no parse."""
    if not entry.gguf.exists() and not entry.record.exists():
        return "missing"
    record = read_record(entry)
    if record is None or record.get("format") != RECORD_FORMAT:
        return "its record is missing or unreadable"
    if record.get("qtype") != qtype or record.get("quantizer_version") != version:
        return "it was made by another quantizer version"
    try:
        known = record["source"]
        if source_identity(source, int(known["header_nbytes"])) != SourceIdentity(**known):
            return "the source changed since it was built"
        size = entry.gguf.stat().st_size
        if size != record.get("nbytes"):
            return f"it has {size} bytes, not {record.get('nbytes')} (truncated?)"
        found = _fingerprint(entry.gguf, int(record["header_nbytes"]))
    except Exception as e:  # noqa: BLE001 - a damaged record or file is a miss, not an error
        return f"it cannot be read ({e})"
    if found != {k: record.get(k) for k in found}:
        return "its header or tail bytes differ from when it was written (corrupted)"
    return None


def touch(entry: Entry) -> None:
    """Mark the entry used now (the LRU order is the records' mtimes)."""
    with contextlib.suppress(OSError):
        os.utime(entry.record)


def remove(entry: Entry) -> None:
    """Delete the entry's record, then its file (a file in use elsewhere on Windows stays)."""
    for p in (entry.record, entry.gguf):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", p, e)


@contextlib.contextmanager
def locked(entry: Entry, blocking: bool = True) -> Iterator[bool]:
    """Hold the entry's exclusive lock; yields False when not blocking and someone else has
    it. Without flock or msvcrt locking (none known) it yields True unlocked."""
    fd = os.open(entry.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        got = _lock(fd, blocking)
        try:
            yield got
        finally:
            if got:
                _unlock(fd)
    finally:
        os.close(fd)


def _lock(fd: int, blocking: bool) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True
    if msvcrt is None:
        log.warning("no file locking on this platform: two processes may build one entry twice")
        return True
    mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK
    while True:  # LK_LOCK gives up after 10 s: retry while the builder works
        try:
            msvcrt.locking(fd, mode, 1)
            return True
        except OSError:
            if not blocking:
                return False


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """An entry as `warmload cache list` shows it."""

    key: str
    source: str
    qtype: str
    nbytes: int
    last_used: float  # seconds since the epoch


def list_entries(root: Path | None = None) -> list[EntryInfo]:
    """Entries with a record, most recently used first."""
    root = root or cache_root()
    out = []
    for rec in root.glob("*.json") if root.is_dir() else ():
        entry = Entry(root, rec.stem)
        data = read_record(entry)
        try:
            nbytes = entry.gguf.stat().st_size + rec.stat().st_size
            used = rec.stat().st_mtime
        except OSError:
            continue
        source = str((data or {}).get("source", {}).get("path", "?"))
        out.append(EntryInfo(entry.key, source, str((data or {}).get("qtype", "?")), nbytes, used))
    return sorted(out, key=lambda e: -e.last_used)


def evict(root: Path, max_bytes: int, keep: str) -> list[EntryInfo]:
    """Remove least recently used entries until the cache holds at most max_bytes (the entry
    `keep` stays whatever its size; entries being built elsewhere are skipped)."""
    removed = []
    entries = list_entries(root)
    total = sum(e.nbytes for e in entries)
    for info in reversed(entries):  # oldest first
        if total <= max_bytes:
            break
        if info.key == keep:
            continue
        entry = Entry(root, info.key)
        with locked(entry, blocking=False) as got:
            if not got:
                continue
            remove(entry)
        with contextlib.suppress(FileNotFoundError):
            entry.lock_file.unlink()
        total -= info.nbytes
        removed.append(info)
        log.info("quantized-weight cache: evicted %s (%s, %d bytes)", info.source, info.qtype,
                 info.nbytes)  # fmt: skip
    if total > max_bytes:
        log.warning("quantized-weight cache holds %d bytes, above its bound of %d: the newest "
                    "entry alone is larger, or others are in use", total, max_bytes)  # fmt: skip
    return removed


def usage(root: Path | None = None) -> tuple[int, int]:
    """(bytes, files) under the cache folder, locks and temporaries included."""
    root = root or cache_root()
    files = [p for p in root.iterdir() if p.is_file()] if root.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry that nobody is building; returns (bytes, files) removed."""
    root = root or cache_root()
    nbytes = files = 0
    for info in list_entries(root):
        entry = Entry(root, info.key)
        with locked(entry, blocking=False) as got:
            if not got:
                continue
            remove(entry)
        with contextlib.suppress(FileNotFoundError):
            entry.lock_file.unlink()
        nbytes, files = nbytes + info.nbytes, files + 2
    leftovers = [*root.glob("*.gguf"), *root.glob(".*.tmp")] if root.is_dir() else []
    for path in leftovers:  # a .gguf without record, or a temporary: a build that died
        entry = Entry(root, path.name.lstrip(".").split(".")[0])
        if path.suffix == ".gguf" and entry.record.exists():
            continue
        with locked(entry, blocking=False) as got, contextlib.suppress(OSError):
            if got:
                nbytes += path.stat().st_size
                path.unlink()
                files += 1
    for path in list(root.glob("*.lock")) if root.is_dir() else ():  # locks of gone entries
        entry = Entry(root, path.stem)
        if not entry.record.exists() and not entry.gguf.exists():
            with locked(entry, blocking=False) as got, contextlib.suppress(OSError):
                if got:
                    path.unlink()
    return nbytes, files
