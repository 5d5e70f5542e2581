"""pull/verify against a loopback HTTP server with Range support and injected failures."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import warmload.pull as pull_mod
from warmload.errors import DownloadError, HashMismatchError
from warmload.pull import lookup_verified, pull, record_verified, verify

CONTENT = random.Random(7).randbytes(3 * (1 << 20) + 12345)  # deterministic
SHA = hashlib.sha256(CONTENT).hexdigest()


class _Server:
    """Serves CONTENT at /model.gguf; behaviour is set per test through attributes."""

    def __init__(self) -> None:
        self.content = CONTENT
        self.validator = "etag"  # "etag", "weak-etag", "last-modified" or None
        self.throttle_s = 0.0  # sleep between 64 KiB writes (to overlap two clients)
        self.fail_first = 0  # answer 500 to this many requests
        self.cut_first = None  # first 200/206 response stops after this many body bytes
        self.ignore_range = False
        self.status = None  # answer every request with this status
        self.requests: list[str | None] = []  # Range header of each request
        self.if_ranges: list[str | None] = []  # If-Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _validators(self) -> None:
                if server.validator is not None:
                    header = "Last-Modified" if server.validator == "last-modified" else "ETag"
                    self.send_header(header, server.current_validator())

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                content = server.content
                server.requests.append(self.headers.get("Range"))
                server.if_ranges.append(self.headers.get("If-Range"))
                if server.status is not None:
                    self.send_error(server.status)
                    return
                if server.fail_first > 0:
                    server.fail_first -= 1
                    self.send_error(500)
                    return
                start = 0
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if if_range is not None and if_range != server.current_validator():
                    rng = None  # RFC 9110 13.1.5: the whole (new) representation
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(content):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(content)}")
                        self.send_header("Content-Length", "0")
                        self._validators()
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                    )
                else:
                    self.send_response(200)
                body = content[start:]
                self.send_header("Content-Length", str(len(body)))
                self._validators()
                self.end_headers()
                if server.cut_first is not None:
                    body, server.cut_first = body[: server.cut_first], None
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                for i in range(0, len(body), 1 << 16):
                    self.wfile.write(body[i : i + (1 << 16)])
                    if server.throttle_s:
                        time.sleep(server.throttle_s)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.gguf"

    def current_validator(self) -> str | None:
        version = hashlib.sha256(self.content).hexdigest()[:16]
        if self.validator == "etag":
            return f'"{version}"'
        if self.validator == "weak-etag":
            return f'W/"{version}"'
        if self.validator == "last-modified":
            return (
                f"Mon, 0{int(version, 16) % 9 + 1} Jan 2024 00:{int(version, 16) % 60:02d}:00 GMT"
            )
        return None


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server()
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    t.join(timeout=5)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))


def test_full_download_checks_hash_and_records_it(server: _Server, tmp_path: Path) -> None:
    seen: list[int] = []
    r = pull(server.url, tmp_path / "m", sha256=SHA.upper(), progress=lambda d, t: seen.append(d))
    assert r.path.read_bytes() == CONTENT and r.sha256 == SHA and r.downloaded
    assert r.resumed_from == 0 and seen[-1] == len(CONTENT)
    assert not (tmp_path / "m" / "model.gguf.part").exists()
    assert lookup_verified(r.path) == SHA
    again = pull(server.url, tmp_path / "m", sha256=SHA)  # verified by its record: no request
    assert not again.downloaded and len(server.requests) == 1


def test_interrupted_transfer_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.cut_first = 1 << 20
    with pytest.raises(DownloadError, match="pull again to resume"):
        pull(server.url, tmp_path, sha256=SHA, max_retries=0)
    part = tmp_path / "model.gguf.part"
    assert part.stat().st_size == 1 << 20 and not (tmp_path / "model.gguf").exists()
    r = pull(server.url, tmp_path, sha256=SHA)
    assert r.resumed_from == 1 << 20 and r.path.read_bytes() == CONTENT
    assert server.requests[-1] == f"bytes={1 << 20}-"


def test_retries_resume_within_one_pull(server: _Server, tmp_path: Path) -> None:
    server.cut_first = 12345
    server.fail_first = 0
    r = pull(server.url, tmp_path, sha256=SHA, backoff_s=0)
    assert r.path.read_bytes() == CONTENT
    assert server.requests == [None, "bytes=12345-"]


def test_server_errors_are_retried_then_reported(server: _Server, tmp_path: Path) -> None:
    server.fail_first = 2
    assert pull(server.url, tmp_path / "a", sha256=SHA, backoff_s=0).sha256 == SHA
    server.fail_first = 10
    with pytest.raises(DownloadError, match="still failing after 2 retries"):
        pull(server.url, tmp_path / "b", max_retries=2, backoff_s=0)
    server.fail_first, server.status = 0, 404
    n = len(server.requests)
    with pytest.raises(DownloadError, match="HTTP 404"):
        pull(server.url, tmp_path / "c", backoff_s=0)
    assert len(server.requests) == n + 1  # a 404 is not retried
    assert not (tmp_path / "c" / "model.gguf").exists()


def test_server_ignoring_range_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "model.gguf.part").write_bytes(CONTENT[:5000])
    server.ignore_range = True
    r = pull(server.url, tmp_path, sha256=SHA)
    assert r.path.read_bytes() == CONTENT


def test_stale_part_longer_than_file_restarts(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "model.gguf.part").write_bytes(b"x" * (len(CONTENT) + 10))
    assert pull(server.url, tmp_path, sha256=SHA).path.read_bytes() == CONTENT


def test_wrong_hash_keeps_everything_and_says_so(server: _Server, tmp_path: Path) -> None:
    old = tmp_path / "model.gguf"
    old.write_bytes(b"the file the user already had")
    with pytest.raises(HashMismatchError, match="was not touched") as e:
        pull(server.url, tmp_path, sha256="0" * 64)
    assert SHA in str(e.value)
    assert old.read_bytes() == b"the file the user already had"
    assert (tmp_path / "model.gguf.mismatch").read_bytes() == CONTENT
    with pytest.raises(Exception, match="64 hex digits"):
        pull(server.url, tmp_path, sha256="abc")


def test_disk_full_keeps_the_part_for_resume(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open
    limit = {"bytes": 1 << 20}

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, b: bytes) -> int:
            if limit["bytes"] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            limit["bytes"] -= len(b)
            return self.f.write(b)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(
        pull_mod, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False
    )
    with pytest.raises(DownloadError, match="disk full .* kept"):
        pull(server.url, tmp_path, sha256=SHA)
    assert not (tmp_path / "model.gguf").exists()
    assert (tmp_path / "model.gguf.part").stat().st_size == 1 << 20
    monkeypatch.undo()
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    r = pull(server.url, tmp_path, sha256=SHA)
    assert r.resumed_from == 1 << 20 and r.path.read_bytes() == CONTENT


def test_verify_uses_record_until_the_file_changes(server: _Server, tmp_path: Path) -> None:
    path = pull(server.url, tmp_path, sha256=SHA).path
    v = verify(path, SHA)
    assert v.ok and v.from_record
    with open(path, "r+b") as f:  # same size, new content (first byte flipped) and mtime
        f.write(bytes([CONTENT[0] ^ 0xFF]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert lookup_verified(path) is None
    v = verify(path, SHA)
    assert v.ok is False and not v.from_record and v.sha256 != SHA


def test_verify_reads_the_sha256_sidecar(tmp_path: Path) -> None:
    f = tmp_path / "x.gguf"
    f.write_bytes(b"hello")
    digest = hashlib.sha256(b"hello").hexdigest()
    assert verify(f).ok is None  # nothing to compare with
    (tmp_path / "x.gguf.sha256").write_text(f"{digest}  x.gguf\n")
    v = verify(f)
    assert v.ok and v.expected == digest and not v.from_record
    assert verify(f).from_record


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="after 1 retries"):
        pull(f"http://127.0.0.1:{port}/m.gguf", tmp_path, max_retries=1, backoff_s=0, timeout=2)
    with pytest.raises(Exception, match="only http"):
        pull("ftp://example.invalid/m.gguf", tmp_path)


def test_cli_pull_and_verify(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from warmload.cli import main

    assert main(["pull", server.url, "--sha256", SHA, "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model.gguf: downloaded" in out and f"sha256 {SHA}" in out
    path = tmp_path / "model.gguf"
    assert main(["verify", str(path), "--sha256", SHA]) == 0
    out = capsys.readouterr().out
    assert "(from the verification record)" in out and out.rstrip().endswith("OK")
    assert main(["verify", str(path), "--sha256", "0" * 64]) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert path.read_bytes() == CONTENT  # a mismatch deletes nothing
    assert main(["pull", server.url, "--sha256", SHA, "-o", str(tmp_path)]) == 0
    assert "already present and verified" in capsys.readouterr().out
    server.status = 404  # not retried
    assert main(["pull", server.url, "-o", str(tmp_path / "x"), "--filename", "y.gguf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "HTTP 404" in err


# ----------------------------------------------------------------- issue 17: items 1, 2, 7

NEW_CONTENT = random.Random(8).randbytes(len(CONTENT))  # same size, other bytes


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_resume_after_the_remote_file_changed_restarts(
    server: _Server, tmp_path: Path, validator: str
) -> None:
    """Item 2: If-Range carries the part's validator; a changed file comes back whole."""
    server.validator = validator
    server.cut_first = 1 << 20
    with pytest.raises(DownloadError):
        pull(server.url, tmp_path, max_retries=0)
    old_validator = server.current_validator()
    server.content = NEW_CONTENT
    r = pull(server.url, tmp_path)  # no --sha256: only the validator can tell
    assert r.path.read_bytes() == NEW_CONTENT and r.resumed_from == 1 << 20
    assert server.if_ranges[-1] == old_validator and server.requests[-1] == f"bytes={1 << 20}-"
    assert r.sha256 == hashlib.sha256(NEW_CONTENT).hexdigest()
    assert not (tmp_path / "model.gguf.part.json").exists()


@pytest.mark.parametrize("validator", [None, "weak-etag"])
def test_a_part_without_a_usable_validator_is_never_resumed(
    server: _Server, tmp_path: Path, validator: str | None
) -> None:
    server.validator = validator
    server.cut_first = 1 << 20
    with pytest.raises(DownloadError):
        pull(server.url, tmp_path, max_retries=0)
    server.content = NEW_CONTENT
    r = pull(server.url, tmp_path)
    assert r.path.read_bytes() == NEW_CONTENT and r.resumed_from == 0
    assert server.requests[-1] is None and server.if_ranges[-1] is None


def test_a_part_recorded_for_another_url_is_not_resumed(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "model.gguf.part").write_bytes(NEW_CONTENT[:5000])
    (tmp_path / "model.gguf.part.json").write_text('{"url": "http://x/y", "validator": "\\"a\\""}')
    assert pull(server.url, tmp_path, sha256=SHA).path.read_bytes() == CONTENT
    assert server.requests == [None]


@pytest.mark.parametrize("meta", ["[", "[]", '{"url": 1}', '{"validator": 5}', "[" * 100000])
def test_a_damaged_part_record_restarts(server: _Server, tmp_path: Path, meta: str) -> None:
    (tmp_path / "model.gguf.part").write_bytes(CONTENT[:5000])
    (tmp_path / "model.gguf.part.json").write_text(meta)
    assert pull(server.url, tmp_path, sha256=SHA).resumed_from == 0


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "warmload", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_concurrent_pulls_into_one_folder(server: _Server, tmp_path: Path) -> None:
    """Item 1: two real processes pull the same target; one downloads, the other waits for it,
    and both report the hash of the file that is there."""
    server.throttle_s = 0.003  # ~1.5 s for 3 MB, so the two overlap
    env = dict(os.environ, WARMLOAD_CACHE_DIR=str(tmp_path / "cache"))
    args = ["pull", server.url, "--sha256", SHA, "-o", str(tmp_path / "m")]
    first = _cli(args, env)
    time.sleep(0.3)
    second = _cli(args, env)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert "downloaded" in outs[0][0] and "already present and verified" in outs[1][0]
    assert all(f"sha256 {SHA}" in out for out, _ in outs)
    path = tmp_path / "m" / "model.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]
    assert len([r for r in server.requests if r is None]) == 1  # one transfer, no splice
    subprocess.run([sys.executable, "-m", "warmload", "verify", str(path), "--sha256", SHA],
                   env=env, check=True, capture_output=True)  # fmt: skip


def test_two_concurrent_pulls_without_hash(server: _Server, tmp_path: Path) -> None:
    server.throttle_s = 0.003
    env = dict(os.environ, WARMLOAD_CACHE_DIR=str(tmp_path / "cache"))
    args = ["pull", server.url, "-o", str(tmp_path / "m")]
    procs = [_cli(args, env) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(f"sha256 {SHA}" in out for out, _ in outs)
    assert (tmp_path / "m" / "model.gguf").read_bytes() == CONTENT


def test_a_record_is_written_only_for_the_file_that_was_hashed(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"one")
    hashed = os.stat(path)
    with open(path, "ab") as f:  # changed after hashing (another writer)
        f.write(b"!")
    assert not record_verified(path, hashlib.sha256(b"one").hexdigest(), hashed)
    assert lookup_verified(path) is None
    assert record_verified(path, hashlib.sha256(b"one!").hexdigest(), os.stat(path))
    assert lookup_verified(path) == hashlib.sha256(b"one!").hexdigest()


@pytest.mark.parametrize("cache", ["file", "full"])
def test_an_unusable_cache_does_not_fail_pull_or_verify(
    server: _Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    cache: str,
) -> None:
    """Item 7: the download and the check succeed; only the record is lost, with a warning."""
    from warmload import caches
    from warmload.cli import main

    monkeypatch.setattr(caches, "_warned", set())
    if cache == "file":
        (tmp_path / "cache").write_text("not a folder")
    else:
        real = caches.atomic_output

        def full(path, suffix=".tmp"):
            if Path(path).name == "verified.json":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, suffix)

        monkeypatch.setattr(caches, "atomic_output", full)
    for _ in range(2):
        assert main(["pull", server.url, "--sha256", SHA, "-o", str(tmp_path / "m")]) == 0
        assert main(["verify", str(tmp_path / "m" / "model.gguf"), "--sha256", SHA]) == 0
    assert "error" not in capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "continuing without it" in warnings[0]
    assert (tmp_path / "m" / "model.gguf").read_bytes() == CONTENT


def test_disk_full_at_the_rename_names_the_path(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(pull_mod.os, "replace", full)
    with pytest.raises(DownloadError, match=r"model\.gguf.*No space left"):
        pull(server.url, tmp_path, sha256=SHA)
