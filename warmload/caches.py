"""What warmload keeps under cache_dir() ($WARMLOAD_CACHE_DIR, default ~/.cache/warmload), how
it is written, and how it is checked before it is trusted.

Every entry is derived data: removing it only costs the time to rebuild it. So nothing here is
trusted blindly. Each artefact carries its source identity and a checksum (a header in the file,
or a side record for files that must stay in their own format, such as joined GGUF models), is
written to a temporary file that is fsynced and renamed, and is built under a lock
(warmload.locks) so concurrent processes cooperate: one builds, the others wait, then read. A bad
entry is discarded and rebuilt with one warning. A cache folder that cannot be used (a file in
its place, read-only, full) degrades to no cache, with one warning per folder and process.

There is deliberately no cache of converted weights: the packed kernels (warmload.kernels)
compute on the GGUF file's own blocks, so a load converts nothing that a cache could save, and a
second copy of the weights on disk would only double the pages competing for RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmload.config import cache_dir
from warmload.errors import RequestError
from warmload.locks import file_lock

log = logging.getLogger(__name__)

# name -> (path under cache_dir(), what it holds)
ENTRIES = {
    "models": ("models", "packaged models joined from their part packages (Gemma 3, Qwen2.5)"),
    "tokenizer": ("tokenizer", "merges derived from SentencePiece vocabularies, by vocab hash"),
    "threads": ("threads.json", "thread counts tuned by `warmload bench --tune-threads`"),
    "verified": ("verified.json", "SHA-256 verification records of `warmload pull/verify`"),
}
_MAGIC = b"WLCACHE1\n"  # a checked file: magic, one JSON header line, then the payload
_RECORD_VERSION = 1
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` as a warning the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def cache_unusable(path: Path, exc: BaseException) -> None:
    """The one warning for a cache location that cannot be read or written."""
    warn_once(
        f"unusable:{path.parent}",
        f"warning: cache {path.parent} cannot be used ({exc.__class__.__name__}: {exc}); "
        f"continuing without it (set WARMLOAD_CACHE_DIR to a writable folder)",
    )


def discard_bad(path: Path, why: str) -> None:
    """Remove a damaged cache entry (one warning) so it is rebuilt."""
    warn_once(f"bad:{path}", f"warning: cache entry {path} is damaged ({why}); rebuilding it")
    with contextlib.suppress(OSError):
        path.unlink()


# ------------------------------------------------------------------ atomic writes and locks


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`.

    On any exception (KeyboardInterrupt, ENOSPC, ...) the temporary file is removed and `path`
    is left as it was.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):  # make the rename durable where the OS allows
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[bool]:
    """Lock the cache entry `path` across processes; yields False (no lock, one warning) when
    its folder cannot be created or written, so the caller carries on without the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = file_lock(lock_path(path), remove=True)
        lock.__enter__()
    except OSError as exc:
        cache_unusable(path, exc)
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


# ------------------------------------------------------------------ files with a checked header


def _digest(payload: bytes | memoryview) -> str:
    return hashlib.sha256(payload).hexdigest()


def write_checked(path: Path, source: dict[str, Any], payload: bytes | memoryview) -> bool:
    """Write payload with a header naming its source and checksum; False (one warning) when
    the cache cannot be written."""
    header = {"source": source, "nbytes": len(payload), "sha256": _digest(payload)}
    line = json.dumps(header, sort_keys=True).encode() + b"\n"
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            f.write(_MAGIC + line)
            f.write(payload)
    except OSError as exc:
        cache_unusable(path, exc)
        return False
    return True


def read_checked(path: Path, source: dict[str, Any]) -> bytes | None:
    """The payload written by write_checked for this source; None when absent, and None after
    discarding the file (one warning) when it is damaged or belongs to another source."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        cache_unusable(path, exc)
        return None
    end = data.find(b"\n", len(_MAGIC))
    try:
        if not data.startswith(_MAGIC) or end < 0:
            raise ValueError("no warmload cache header")
        header = json.loads(data[len(_MAGIC) : end])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, RecursionError) as exc:
        discard_bad(path, str(exc))
        return None
    payload = data[end + 1 :]
    if header.get("source") != source:
        discard_bad(path, "written for another source")
    elif header.get("nbytes") != len(payload):
        discard_bad(path, f"{len(payload)} payload bytes, header says {header.get('nbytes')}")
    elif header.get("sha256") != _digest(payload):
        discard_bad(path, "checksum mismatch")
    else:
        return payload
    return None


# ------------------------------------------------------------------ JSON records


def _entries_digest(entries: dict[str, Any]) -> str:
    return _digest(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode())


def read_record(path: Path, kind: str, valid: Callable[[str, Any], bool]) -> dict[str, Any]:
    """The entries of a JSON record file (threads.json, verified.json); {} when absent. A file
    of the wrong shape or checksum is discarded, and entries that fail `valid` are dropped,
    each with one warning."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        cache_unusable(path, exc)
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        discard_bad(path, f"not JSON: {exc}")
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if (
        not isinstance(entries, dict)
        or data.get("warmload") != kind
        or data.get("version") != _RECORD_VERSION
        or data.get("sha256") != _entries_digest(entries)
    ):
        discard_bad(path, f"not a version-{_RECORD_VERSION} {kind} record, or its checksum fails")
        return {}
    good = {k: v for k, v in entries.items() if valid(k, v)}
    if len(good) != len(entries):
        warn_once(f"bad:{path}", f"warning: {path}: dropped {len(entries) - len(good)} bad entries")
    return good


def update_record(
    path: Path,
    kind: str,
    valid: Callable[[str, Any], bool],
    update: Callable[[dict[str, Any]], None],
) -> bool:
    """Read, change (`update` mutates the entries) and rewrite a JSON record under its lock, so
    concurrent writers do not lose each other's entries. False (one warning) when the cache
    cannot be written; the caller's own work is not affected."""
    with entry_lock(path) as locked:
        if not locked:
            return False
        entries = read_record(path, kind, valid)
        update(entries)
        record = {
            "warmload": kind,
            "version": _RECORD_VERSION,
            "sha256": _entries_digest(entries),
            "entries": entries,
        }
        try:
            with atomic_output(path) as tmp:
                tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        except OSError as exc:
            cache_unusable(path, exc)
            return False
    return True


def stamp(st: os.stat_result) -> dict[str, int]:
    """What identifies a file's current contents cheaply: size, mtime and inode."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


# ------------------------------------------------------------------ cache list / clear


@dataclass(frozen=True, slots=True)
class CacheEntry:
    name: str
    path: Path
    description: str
    nbytes: int
    files: int


def _usage(path: Path) -> tuple[int, int]:
    try:
        if path.is_file():
            return path.stat().st_size, 1
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        return sum(p.stat().st_size for p in files), len(files)
    except OSError:
        return 0, 0


def list_caches() -> list[CacheEntry]:
    """Every known entry, present or not (0 files when absent)."""
    root = cache_dir()
    entries = []
    for name, (relative, description) in ENTRIES.items():
        path = root / relative
        nbytes, files = _usage(path)
        entries.append(CacheEntry(name, path, description, nbytes, files))
    return entries


def clear_caches(names: list[str] | None = None) -> list[CacheEntry]:
    """Remove the named entries (all when names is empty or None); returns what was removed."""
    unknown = sorted(set(names or ()) - set(ENTRIES))
    if unknown:
        raise RequestError(
            f"unknown cache {', '.join(unknown)}; known: {', '.join(ENTRIES)}", "names"
        )
    removed = []
    for entry in list_caches():
        if names and entry.name not in names or not entry.files:
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        removed.append(entry)
    return removed
