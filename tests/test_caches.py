"""warmload.caches and warmload.locks: checked entries, JSON records, locks between two real
processes, and a cache folder that cannot be used."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from warmload import caches
from warmload.caches import read_checked, read_record, update_record, write_checked

SOURCE = {"vocab": "abc", "n": 3}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch, tmp_path):
    monkeypatch.setattr(caches, "_warned", set())
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_checked_file_round_trips(tmp_path):
    path = tmp_path / "entry.bin"
    assert write_checked(path, SOURCE, b"payload" * 100)
    assert read_checked(path, SOURCE) == b"payload" * 100
    assert [p.name for p in tmp_path.iterdir()] == ["entry.bin"]  # no temporary left


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "empty", "other-source", "no-header", "header-not-object"],
)
def test_damaged_checked_file_is_discarded_with_one_warning(tmp_path, caplog, damage):
    path = tmp_path / "entry.bin"
    write_checked(path, SOURCE, bytes(range(256)) * 10)
    data = bytearray(path.read_bytes())
    source = SOURCE
    if damage == "flip":
        data[-100] ^= 0x10
    elif damage == "truncate":
        data = data[:-1]
    elif damage == "empty":
        data = bytearray()
    elif damage == "other-source":
        source = {"vocab": "abd", "n": 3}
    elif damage == "no-header":
        data = bytearray(b"\x93NUMPY" + bytes(50))
    else:
        data = bytearray(caches._MAGIC + b"[1, 2]\n" + bytes(4))
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert read_checked(path, source) is None
        assert read_checked(path, source) is None  # gone: a plain miss, no second warning
    assert not path.exists()
    assert len(_warnings(caplog)) == 1 and str(path) in _warnings(caplog)[0]


def _valid(key: str, value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("n"), int)


def test_record_round_trip_and_concurrent_updates_keep_every_entry(tmp_path):
    path = tmp_path / "rec.json"
    assert update_record(path, "test", _valid, lambda e: e.update(a={"n": 1}))
    assert update_record(path, "test", _valid, lambda e: e.update(b={"n": 2}))
    assert read_record(path, "test", _valid) == {"a": {"n": 1}, "b": {"n": 2}}
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from warmload.caches import update_record
        valid = lambda k, v: isinstance(v, int)
        for i in range(40):
            update_record(Path({str(tmp_path / "two.json")!r}), "test", valid,
                          lambda e: e.update({{f"{{sys.argv[1]}}{{i}}": i}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in "xy"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    entries = read_record(tmp_path / "two.json", "test", lambda k, v: isinstance(v, int))
    assert len(entries) == 80  # no update lost to a concurrent read-modify-write


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"a": 1}',
        "null",
        "{",
        "[" * 200_000 + "]" * 200_000,
        '{"warmload": "test", "version": 1, "sha256": "0", "entries": {}}',
        '{"warmload": "test", "version": 1, "entries": []}',
        '{"warmload": "other", "version": 1, "entries": {}}',
    ],
)
def test_record_of_the_wrong_shape_is_discarded(tmp_path, caplog, text):
    path = tmp_path / "rec.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert read_record(path, "test", _valid) == {}
    assert len(_warnings(caplog)) == 1 and not path.exists()


def test_record_entries_of_the_wrong_shape_are_dropped(tmp_path, caplog):
    path = tmp_path / "rec.json"
    update_record(path, "test", lambda k, v: True, lambda e: e.update(a={"n": 1}, b=[1], c=None))
    with caplog.at_level(logging.WARNING):
        assert read_record(path, "test", _valid) == {"a": {"n": 1}}
    assert len(_warnings(caplog)) == 1


def test_cache_folder_that_is_a_file_degrades_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert not update_record(blocker / "rec.json", "test", _valid, lambda e: None)
            assert not write_checked(blocker / "x.bin", SOURCE, b"x")
            assert read_checked(blocker / "x.bin", SOURCE) is None
            assert read_record(blocker / "rec.json", "test", _valid) == {}
    assert len(_warnings(caplog)) == 1 and "continuing without it" in _warnings(caplog)[0]


def test_full_disk_leaves_no_temporary(tmp_path, monkeypatch, caplog):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    path = tmp_path / "x.bin"
    monkeypatch.setattr(caches.os, "fsync", full)
    with caplog.at_level(logging.WARNING):
        assert not write_checked(path, SOURCE, b"x" * 1000)
    assert list(tmp_path.iterdir()) == [] and len(_warnings(caplog)) == 1


def test_lock_serialises_two_processes(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from warmload.locks import file_lock
        log = {str(tmp_path / "log.txt")!r}
        for _ in range(5):
            with file_lock({str(tmp_path / "x.lock")!r}, remove=True):
                with open(log, "a") as f:
                    f.write(f"start {{sys.argv[1]}}\\n")
                time.sleep(0.02)
                with open(log, "a") as f:
                    f.write(f"end {{sys.argv[1]}}\\n")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 20
    for start, end in zip(lines[::2], lines[1::2]):
        assert start.split()[0] == "start" and end == "end " + start.split()[1]
    assert not (tmp_path / "x.lock").exists()


def test_lock_timeout(tmp_path):
    from warmload.locks import LockTimeout, file_lock

    script = textwrap.dedent(f"""
        import time
        from warmload.locks import file_lock
        with file_lock({str(tmp_path / "x.lock")!r}):
            print("held", flush=True)
            time.sleep(5)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout), file_lock(tmp_path / "x.lock", timeout_s=0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    with file_lock(tmp_path / "x.lock", timeout_s=5):  # the kernel dropped the dead holder's lock
        pass


def test_record_json_is_the_documented_shape(tmp_path):
    path = tmp_path / "rec.json"
    update_record(path, "test", _valid, lambda e: e.update(a={"n": 1}))
    data = json.loads(path.read_text())
    assert (
        data["warmload"] == "test" and data["version"] == 1 and data["entries"] == {"a": {"n": 1}}
    )
