"""Download a model file over HTTP(S) with resume and SHA-256 check.

`pull(url, dest_dir, sha256=...)` streams into `<name>.part` beside the target, resumes an
interrupted transfer with a Range request guarded by If-Range (RFC 9110 sections 13.1.5 and 14):
the part's validator (a strong ETag, else Last-Modified) is kept in `<name>.part.json`, and a
remote file that changed since answers 200 with the whole new file, so the download restarts
from zero instead of splicing the old start onto the new end. A part without a validator is
never resumed. Retries network and 5xx errors a bounded number of times with back-off, hashes
while writing, and renames the finished file onto `<name>` only when its size and hash are
right. Nothing of value is deleted: a failed transfer keeps the `.part` for the next run, a
hash mismatch keeps the download as `<name>.mismatch` and leaves `<name>` untouched.

One pull per target at a time: `<name>.lock` (warmload.locks) is held for the whole pull, so a
second pull of the same file waits, then finds it downloaded and checks it. The verification
record (warmload.verification) is written for the file whose bytes were hashed, and an unusable
cache folder costs a warning, never a finished download. stdlib only (urllib).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from warmload.caches import atomic_output
from warmload.errors import DownloadError, HashMismatchError, RequestError
from warmload.locks import file_lock
from warmload.verification import (  # noqa: F401 - verify & co. are pull's public API too
    ByteProgress,
    VerifyResult,
    file_sha256,
    hash_file,
    lookup_verified,
    normalise_hash,
    record_verified,
    verify,
)

_CHUNK = 1 << 20
_USER_AGENT = "warmload/0.1 (+urllib)"


@dataclass(frozen=True, slots=True)
class PullResult:
    path: Path
    sha256: str
    nbytes: int
    resumed_from: int  # bytes already in .part when this pull started (0: fresh)
    downloaded: bool  # False when the file was already there and verified
    seconds: float


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


def _validator(headers: Any) -> str | None:
    """What If-Range can compare: a strong ETag, else Last-Modified (RFC 9110 13.1.5)."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    modified = (headers.get("Last-Modified") or "").strip()
    return modified or None


@dataclass(slots=True)
class _Transfer:
    url: str
    part: Path
    timeout: float
    progress: ByteProgress | None
    hasher: Any = None
    have: int = 0  # bytes in .part (and in hasher)
    total: int | None = None
    validator: str | None = None  # of the bytes in .part; None: they cannot be resumed

    @property
    def meta(self) -> Path:
        return self.part.with_name(self.part.name + ".json")

    def restart(self) -> None:
        self.part.write_bytes(b"")
        self.meta.unlink(missing_ok=True)
        self.hasher, self.have, self.validator = hashlib.sha256(), 0, None

    def resume(self) -> None:
        """Take over an existing .part when its validator was recorded for this URL."""
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            meta = None
        validator = meta.get("validator") if isinstance(meta, dict) else None
        if not self.part.is_file() or not isinstance(validator, str) or meta["url"] != self.url:
            self.restart()  # no way to tell whether the remote file is still the same
            return
        self.validator = validator
        hash_file(self.part, self.hasher)
        self.have = self.part.stat().st_size

    def _start(self, headers: Any) -> None:
        """A 200: the whole file follows; remember its validator before the first byte."""
        if self.have:
            self.restart()
        self.validator = _validator(headers)
        with atomic_output(self.meta) as tmp:
            tmp.write_text(json.dumps({"url": self.url, "validator": self.validator}))

    def attempt(self) -> bool:
        """One request; True when the file is complete. Raises on errors."""
        if self.have and self.validator is None:
            self.restart()
        req = urllib.request.Request(self.url, headers={"User-Agent": _USER_AGENT})
        if self.have:
            req.add_header("Range", f"bytes={self.have}-")
            req.add_header("If-Range", self.validator)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and self.have:  # nothing after what we have: complete, or stale
                _, total = _content_range(e.headers.get("Content-Range"))
                same = _validator(e.headers) == self.validator
                e.close()
                if total == self.have and same:
                    self.total = total
                    return True
                self.restart()
                return False
            raise
        with resp:
            if resp.status == 206:
                start, self.total = _content_range(resp.headers.get("Content-Range"))
                now = _validator(resp.headers)
                if start != self.have or (now is not None and now != self.validator):
                    self.restart()  # not the range we asked for, or not the file we have
                    return False
            else:  # 200: the whole file (no range sent, ignored, or If-Range did not match)
                self._start(resp.headers)
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
    A concurrent pull of the same target (another process) is waited for.
    """
    expected = normalise_hash(sha256)
    name = filename or _filename(url)
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        lock = file_lock(dest / (name + ".lock"), remove=True)
        lock.__enter__()
    except OSError as e:
        raise DownloadError(f"{dest}: cannot write there ({e.strerror or e})") from e
    try:
        return _pull_locked(url, dest, name, expected, progress, timeout, max_retries, backoff_s)
    except OSError as e:  # local file trouble (disk full at the rename, permissions): name it
        where = e.filename or dest / name
        raise DownloadError(f"{where}: {e.strerror or e} while pulling {url}") from e
    finally:
        lock.__exit__(None, None, None)


def _pull_locked(
    url: str,
    dest: Path,
    name: str,
    expected: str | None,
    progress: ByteProgress | None,
    timeout: float,
    max_retries: int,
    backoff_s: float,
) -> PullResult:
    t0 = time.perf_counter()
    final, part = dest / name, dest / (name + ".part")
    if final.is_file():
        check = verify(final, expected) if expected else None
        if check is None or check.ok:
            digest = check.sha256 if check else file_sha256(final)
            return PullResult(final, digest, final.stat().st_size, 0, False, 0.0)
    t = _Transfer(url, part, timeout, progress, hashlib.sha256())
    t.resume()
    resumed_from = t.have
    _download(t, max_retries, backoff_s)
    digest = t.hasher.hexdigest()
    if expected and digest != expected:
        bad = dest / (name + ".mismatch")
        os.replace(part, bad)
        t.meta.unlink(missing_ok=True)
        raise HashMismatchError(
            f"{url}: downloaded {t.have} bytes with sha256 {digest}, expected {expected}; "
            f"{final} was not touched and the download is kept as {bad}"
        )
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
        hashed = os.fstat(f.fileno())
    os.replace(part, final)
    t.meta.unlink(missing_ok=True)
    if expected:
        record_verified(final, digest, hashed)  # a warning, not an error, if it cannot be kept
    return PullResult(final, digest, t.have, resumed_from, True, time.perf_counter() - t0)
