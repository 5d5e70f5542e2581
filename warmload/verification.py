"""SHA-256 checks of model files, and the records that let later checks skip re-hashing.

`verify(path, sha256)` hashes a file (or trusts its record) and compares. A record (size, mtime,
inode, sha256) in cache_dir()/verified.json is written only for the file whose bytes were hashed:
the stat taken from the open file before hashing must still be the path's stat afterwards, so a
file replaced or changed meanwhile is never recorded. Records are a checked JSON record
(warmload.caches: locked, atomic, checksummed); an unusable cache folder costs a warning, never
the check itself. stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmload.caches import read_record, stamp, update_record
from warmload.config import cache_dir
from warmload.errors import RequestError

ByteProgress = Callable[[int, "int | None"], None]  # (bytes done, bytes total or None)
_CHUNK = 8 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    path: Path
    sha256: str
    expected: str | None  # the hash checked against (argument or PATH.sha256), None if none
    ok: bool | None  # None: nothing to check against
    from_record: bool  # True: the verification record said so, the file was not re-read


def normalise_hash(h: str | None) -> str | None:
    if h is None:
        return None
    h = h.strip().lower()
    if not _HEX64.match(h):
        raise RequestError(f"sha256 must be 64 hex digits, got {h!r}", "sha256")
    return h


def hash_file(path: Path, h: Any, progress: ByteProgress | None = None) -> os.stat_result:
    """Feed a file's bytes to hash object h; return the stat of the file as it was opened."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        done = 0
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, st.st_size)
    return st


def file_sha256(path: str | os.PathLike[str], progress: ByteProgress | None = None) -> str:
    h = hashlib.sha256()
    hash_file(Path(path), h, progress)
    return h.hexdigest()


def _records_path() -> Path:
    return cache_dir() / "verified.json"


def _valid(key: str, value: Any) -> bool:
    return (
        isinstance(value, dict)
        and all(type(value.get(k)) is int for k in ("size", "mtime_ns", "ino"))
        and isinstance(value.get("sha256"), str)
        and bool(_HEX64.match(value["sha256"]))
    )


def record_verified(
    path: str | os.PathLike[str], sha256: str, hashed: os.stat_result | None = None
) -> bool:
    """Remember that `path` has this SHA-256. `hashed`: the stat of the file whose bytes gave
    the hash; nothing is recorded when the path is no longer that file, unchanged. False when
    nothing was recorded (changed file, or an unusable cache: one warning)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return False
    now = stamp(st)
    if hashed is not None and stamp(hashed) != now:
        return False
    entry = {**now, "sha256": sha256}
    return update_record(_records_path(), "verified", _valid, lambda e: e.update({str(p): entry}))


def lookup_verified(path: str | os.PathLike[str]) -> str | None:
    """The recorded SHA-256 of `path` if it has not changed since (same size, mtime, inode)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return None
    rec = read_record(_records_path(), "verified", _valid).get(str(p))
    if not rec or {k: rec[k] for k in ("size", "mtime_ns", "ino")} != stamp(st):
        return None
    return rec["sha256"]


def _sidecar_hash(path: Path) -> str | None:
    """The hash in PATH.sha256 (sha256sum format), if that file exists."""
    side = path.with_name(path.name + ".sha256")
    try:
        first = side.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RequestError(f"{side}: cannot read the expected hash ({e})", "sha256") from e
    if not first:
        raise RequestError(f"{side}: empty; expected '<64 hex digits>  <name>'", "sha256")
    return normalise_hash(first[0])


def verify(
    path: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    progress: ByteProgress | None = None,
    use_record: bool = True,
) -> VerifyResult:
    """Check `path` against `sha256` (or the hash in PATH.sha256 when not given).

    A file whose verification record still matches is not re-read (use_record=False forces
    it). A match is recorded; a mismatch is reported (ok=False), never raised or deleted.
    """
    p = Path(path)
    if not p.is_file():
        raise RequestError(f"{p}: no such file", "path")
    expected = normalise_hash(sha256) or _sidecar_hash(p)
    recorded = lookup_verified(p) if use_record else None
    if recorded is not None and (expected is None or recorded == expected):
        return VerifyResult(p, recorded, expected, True if expected else None, True)
    h = hashlib.sha256()
    try:
        hashed = hash_file(p, h, progress)
    except OSError as e:
        raise RequestError(f"{p}: cannot read it ({e.strerror or e})", "path") from e
    actual = h.hexdigest()
    ok = None if expected is None else actual == expected
    if ok:
        record_verified(p, actual, hashed)
    return VerifyResult(p, actual, expected, ok, False)
