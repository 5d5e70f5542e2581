"""Download a model file over HTTP(S) with resume and SHA-256 check; verification records.

`pull(url, dest_dir, sha256=...)` streams into `<name>.part` beside the target, resumes an
interrupted transfer with a Range request (RFC 9110 section 14; a server that ignores the range
answers 200 and the download restarts), retries network and 5xx errors a bounded number of times
with back-off, hashes while writing, and renames the finished file onto `<name>` only when its
size and hash are right. Nothing of value is deleted: a failed transfer keeps the `.part` for the
next run, a hash mismatch keeps the download as `<name>.mismatch` and leaves `<name>` untouched.

A verification record (path, size, mtime, sha256) in cache_dir()/verified.json lets later checks
skip re-hashing a file until it changes (`lookup_verified`, `verify`). stdlib only (urllib).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from warmload.config import cache_dir
from warmload.errors import DownloadError, HashMismatchError, RequestError
from warmload.formats.gguf_write import atomic_output

ByteProgress = Callable[[int, "int | None"], None]  # (bytes done, bytes total or None)
_CHUNK = 1 << 20
_USER_AGENT = "warmload/0.1 (+urllib)"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class PullResult:
    path: Path
    sha256: str
    nbytes: int
    resumed_from: int  # bytes already in .part when this pull started (0: fresh)
    downloaded: bool  # False when the file was already there and verified
    seconds: float


@dataclass(frozen=True, slots=True)
class VerifyResult:
    path: Path
    sha256: str
    expected: str | None  # the hash checked against (argument or PATH.sha256), None if none
    ok: bool | None  # None: nothing to check against
    from_record: bool  # True: the verification record said so, the file was not re-read


def _normalise_hash(h: str | None) -> str | None:
    if h is None:
        return None
    h = h.strip().lower()
    if not _HEX64.match(h):
        raise RequestError(f"sha256 must be 64 hex digits, got {h!r}", "sha256")
    return h


def _hash_file(path: Path, h: Any, progress: ByteProgress | None = None) -> int:
    """Feed a file's bytes to hash object h; return how many there were."""
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 8):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return done


def file_sha256(path: str | os.PathLike[str], progress: ByteProgress | None = None) -> str:
    h = hashlib.sha256()
    _hash_file(Path(path), h, progress)
    return h.hexdigest()


# ----------------------------------------------------------------- verification records


def _records_path() -> Path:
    return cache_dir() / "verified.json"


def _load_records() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_records_path().read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a missing or damaged record file only costs a re-hash
    return data if isinstance(data, dict) else {}


def record_verified(path: str | os.PathLike[str], sha256: str) -> None:
    """Remember that `path`, as it is now (size, mtime), has this SHA-256."""
    p = Path(path).resolve()
    st = p.stat()
    records = _load_records()
    records[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    out = _records_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")


def lookup_verified(path: str | os.PathLike[str]) -> str | None:
    """The recorded SHA-256 of `path` if it has not changed since (same size and mtime)."""
    p = Path(path).resolve()
    rec = _load_records().get(str(p))
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    if not rec or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    return rec.get("sha256")


def _sidecar_hash(path: Path) -> str | None:
    """The hash in PATH.sha256 (sha256sum format), if that file exists."""
    side = path.with_name(path.name + ".sha256")
    try:
        first = side.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    return _normalise_hash(first[0]) if first else None


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
    expected = _normalise_hash(sha256) or _sidecar_hash(p)
    recorded = lookup_verified(p) if use_record else None
    if recorded is not None and (expected is None or recorded == expected):
        return VerifyResult(p, recorded, expected, True if expected else None, True)
    actual = file_sha256(p, progress)
    ok = None if expected is None else actual == expected
    if ok:
        record_verified(p, actual)
    return VerifyResult(p, actual, expected, ok, False)


# ----------------------------------------------------------------- download


def _filename(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise RequestError(f"only http(s) URLs can be pulled, not {url!r}", "url")
    name = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RequestError(f"cannot tell a file name from {url!r}; pass filename=", "url")
    return name


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    return start, int(m.group(2)) if m.group(2) != "*" else None


@dataclass(slots=True)
class _Transfer:
    url: str
    part: Path
    timeout: float
    progress: ByteProgress | None
    hasher: Any = None
    have: int = 0  # bytes in .part (and in hasher)
    total: int | None = None

    def restart(self) -> None:
        self.part.write_bytes(b"")
        self.hasher, self.have = hashlib.sha256(), 0

    def attempt(self) -> bool:
        """One request; True when the file is complete. Raises on errors."""
        req = urllib.request.Request(self.url, headers={"User-Agent": _USER_AGENT})
        if self.have:
            req.add_header("Range", f"bytes={self.have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and self.have:  # nothing after what we have: complete, or stale
                _, total = _content_range(e.headers.get("Content-Range"))
                e.close()
                if total == self.have:
                    self.total = total
                    return True
                self.restart()
                return False
            raise
        with resp:
            if resp.status == 206:
                start, self.total = _content_range(resp.headers.get("Content-Range"))
                if start != self.have:
                    self.restart()
                    return False
            else:  # 200: the whole file (the server ignored or we did not send a range)
                if self.have:
                    self.restart()
                length = resp.headers.get("Content-Length")
                self.total = int(length) if length and length.isdigit() else None
            with open(self.part, "ab") as f:
                self._stream(resp, f)
        if self.total is not None and self.have != self.total:
            # http.client returns a short body quietly when the connection drops
            raise http.client.IncompleteRead(b"", self.total - self.have)
        return True

    def _stream(self, resp: Any, f: BinaryIO) -> None:
        while chunk := resp.read(_CHUNK):
            try:
                f.write(chunk)
                f.flush()
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DownloadError(
                        f"disk full while writing {self.part} after {self.have} bytes"
                        f"{f' of {self.total}' if self.total else ''}; the partial file is "
                        "kept: free some space and pull again to resume"
                    ) from e
                raise
            self.hasher.update(chunk)
            self.have += len(chunk)
            if self.progress:
                self.progress(self.have, self.total)


def _retryable(e: BaseException) -> bool:
    """Network trouble and server-side statuses are retried; local file errors are not."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return isinstance(
        e, (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)
    )


def _download(t: _Transfer, max_retries: int, backoff_s: float) -> None:
    failures = restarts = 0
    while True:
        try:
            if t.attempt():
                return
            restarts += 1  # a stale .part was dropped: start again from zero, at once
            if restarts > 2:
                raise DownloadError(f"{t.url}: the server's ranges do not match its file size")
            continue
        except DownloadError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            if not _retryable(e):
                status = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(e)
                raise DownloadError(f"{t.url}: {status}; kept {t.have} bytes in {t.part}") from e
            failures += 1
            if failures > max_retries:
                raise DownloadError(
                    f"{t.url}: still failing after {max_retries} retries ({e}); kept {t.have} "
                    f"bytes in {t.part}: pull again to resume"
                ) from e
            time.sleep(min(backoff_s * 2 ** (failures - 1), 10.0))


def pull(
    url: str,
    dest_dir: str | os.PathLike[str] = ".",
    *,
    sha256: str | None = None,
    filename: str | None = None,
    progress: ByteProgress | None = None,
    timeout: float = 30.0,
    max_retries: int = 5,
    backoff_s: float = 0.5,
) -> PullResult:
    """Download `url` into dest_dir (resuming a previous `.part`), check it, rename it in place.

    sha256: the expected hex digest; a mismatch raises HashMismatchError and keeps the download
    as `<name>.mismatch`. A target that already exists and matches (by its verification record
    or by hashing) is not downloaded again; one that exists without an expected hash is kept.
    """
    t0 = time.perf_counter()
    expected = _normalise_hash(sha256)
    name = filename or _filename(url)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / (name + ".part")
    if final.is_file():
        check = verify(final, expected) if expected else None
        if check is None or check.ok:
            digest = check.sha256 if check else file_sha256(final)
            return PullResult(final, digest, final.stat().st_size, 0, False, 0.0)
    t = _Transfer(url, part, timeout, progress, hashlib.sha256())
    if part.is_file():
        t.have = _hash_file(part, t.hasher)
    resumed_from = t.have
    _download(t, max_retries, backoff_s)
    digest = t.hasher.hexdigest()
    if expected and digest != expected:
        bad = dest / (name + ".mismatch")
        os.replace(part, bad)
        raise HashMismatchError(
            f"{url}: downloaded {t.have} bytes with sha256 {digest}, expected {expected}; "
            f"{final} was not touched and the download is kept as {bad}"
        )
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, final)
    if expected:
        record_verified(final, digest)
    return PullResult(final, digest, t.have, resumed_from, True, time.perf_counter() - t0)
