"""The portable OS layer (warmload/oscalls.py): with each POSIX-only call absent, as on macOS or
Windows, warmload imports, loads (mmap and read modes, mlock and warm-up asked for), generates
the same tokens and says what it lost in one log line per call.

The absences are simulated in a fresh interpreter (warmload imported with sys.modules["resource"]
= None; then per absence os / mmap attributes deleted, no C library, no `resource`), three loads
and generations per absence, each compared with the loads where nothing is missing."""

from __future__ import annotations

import json
import logging
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from warmload import oscalls

SCRIPT = r"""
import json, logging, mmap, os, sys

class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []
    def emit(self, record):
        self.lines.append(record.getMessage())

lines = Lines()
logging.getLogger("warmload").addHandler(lines)
logging.getLogger("warmload").setLevel(logging.INFO)
sys.modules["resource"] = None  # import resource -> ImportError, as on Windows
import warmload
from warmload import memstats, oscalls, threads
from warmload.loader import warm
del sys.modules["resource"]  # warmload imported without it; each absence below is one run
libc, saved = oscalls._libc, {n: getattr(os, n) for n in ("posix_fadvise", "preadv", "pread",
                                                         "sched_getaffinity")}
map_anonymous = mmap.MAP_ANONYMOUS

def run(absent):
    lines.lines.clear()
    oscalls._reported.clear()
    if "resource" in absent:
        sys.modules["resource"] = None
    if "libc" in absent:
        oscalls._libc = lambda: None  # no madvise, mlock, mincore, malloc_trim, sysctlbyname
    for name in saved:
        if name in absent:
            delattr(os, name)
    if "MAP_ANONYMOUS" in absent:
        del mmap.MAP_ANONYMOUS
    if "MADV_POPULATE_READ" in absent:
        warm.sys = type("NotLinux", (), {"platform": "darwin"})
    out = {"tokens": []}
    try:
        for load_mode, warmup in (("mmap", "willneed"), ("mmap", "populate"), ("read", "read")):
            engine = warmload.load(sys.argv[1], load_mode=load_mode, mlock=load_mode == "mmap",
                                   warmup=warmup, warmup_sync=True)
            done = engine.generate("The sky is", max_tokens=4, temperature=0)
            out["tokens"].append(done.token_ids)
            try:
                out["residency"] = engine.residency()
            except OSError as e:
                out["residency"] = str(e)
            engine.close()
        memstats.release_freed_memory()
        out["peak_rss"] = memstats.peak_rss_bytes()
        out["threads"] = threads.default_threads()
        out["usable"] = len(threads.usable_cpus())
    finally:
        sys.modules.pop("resource", None)
        oscalls._libc = libc
        for name, value in saved.items():
            setattr(os, name, value)
        mmap.MAP_ANONYMOUS = map_anonymous
        warm.sys = sys
    out["lines"] = [line for line in lines.lines if "is not available on this system" in line]
    return out

print(json.dumps({absent: run(absent) for absent in sys.argv[2:]}))
"""

# absence -> the calls that must each be reported exactly once
ABSENCES = {
    "": [],
    "resource": ["resource.getrusage"],  # RLIMIT_MEMLOCK is read only when mlock fails
    "libc": ["madvise", "mlock", "mincore", "malloc_trim"],
    "posix_fadvise": [],  # mmap sources advise with madvise; a read source is read through
    "preadv,pread": ["os.preadv", "os.pread"],
    "sched_getaffinity": ["os.sched_getaffinity"],
    "MAP_ANONYMOUS": [],  # the portable anonymous mapping, nothing lost
    "MADV_POPULATE_READ": ["MADV_POPULATE_READ"],
}


@pytest.fixture(scope="module")
def runs(smollm2_path: Path) -> dict:
    """Every absence's run, in one fresh interpreter (one torch import)."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(smollm2_path), *ABSENCES],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("absent", [a for a in ABSENCES if a])
def test_loads_and_generates_with_a_posix_call_absent(runs, absent: str):
    got, baseline = runs[absent], runs[""]
    assert got["tokens"] == baseline["tokens"]  # same weights, same tokens, every load mode
    assert len(got["tokens"][0]) == 4
    said = [line.split(" is not available")[0] for line in got["lines"]]
    assert sorted(said) == sorted(ABSENCES[absent])  # one line per call, over three loads
    if absent == "libc":
        assert "no mincore" in got["residency"]
    else:
        assert 0.99 < got["residency"] <= 1.0
    if absent == "resource":
        assert got["peak_rss"] == 0  # unknown, not guessed
    else:
        assert got["peak_rss"] > 50 << 20
    if absent == "sched_getaffinity":
        assert got["usable"] == os.cpu_count()
    assert 1 <= got["threads"] <= 64


def test_nothing_is_reported_missing_on_linux(runs):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux has every call")
    baseline = runs[""]
    assert baseline["lines"] == []
    assert len(baseline["tokens"]) == 3 and len(set(map(tuple, baseline["tokens"]))) == 1


def test_each_missing_call_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(oscalls, "_reported", set())
    monkeypatch.setattr(oscalls, "_libc", lambda: None)
    with caplog.at_level(logging.INFO, logger="warmload"):
        assert oscalls.madvise(0, 0, 3) is None and oscalls.madvise(0, 0, 3) is None
        assert oscalls.mlock(0, 0) is None and not oscalls.malloc_trim()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and sum("madvise" in line for line in said) == 1


def test_reads_without_pread_seek_their_own_descriptor(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 64)
    monkeypatch.delattr(os, "preadv")
    monkeypatch.delattr(os, "pread")
    fd = os.open(path, os.O_RDONLY)
    try:
        out = memoryview(bytearray(300))
        assert oscalls.pread_into(fd, out, 1000) == 300
        assert bytes(out) == (bytes(range(256)) * 64)[1000:1300]
    finally:
        os.close(fd)


def test_anonymous_memory_without_map_anonymous(monkeypatch):
    monkeypatch.delattr(mmap, "MAP_ANONYMOUS")
    with oscalls.anonymous_map(1 << 16) as m:
        assert len(m) == 1 << 16 and m[:4] == b"\0\0\0\0"
        m[:4] = b"abcd"
        assert m[:4] == b"abcd"
