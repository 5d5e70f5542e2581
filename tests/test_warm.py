"""Warm-up modes, residency (mincore), mlock's failure path and the loader's warm/progress hooks,
on a private copy of the real SmolLM2 file (so evicting it from the page cache touches no one)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from warmload.config import LoadConfig
from warmload.formats.open import open_checkpoint
from warmload.loader import load_model, warm


@pytest.fixture(scope="module")
def model_copy(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("warm") / "model.gguf"
    shutil.copyfile(smollm2_path, dst)
    return dst


def evict(path: Path) -> float:
    """Drop the file from the page cache; skip the test where the kernel keeps it anyway."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped by DONTNEED
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    resident, size = warm.file_residency(path)
    if resident > size // 2:
        pytest.skip(f"POSIX_FADV_DONTNEED left {resident}/{size} bytes resident here")
    return resident / size


@pytest.mark.parametrize(
    ("mode", "load_mode"),
    [
        ("willneed", "mmap"),
        ("populate", "mmap"),
        ("read", "mmap"),
        ("auto", "mmap"),
        ("read", "read"),
        ("auto", "read"),
    ],
)
def test_warm_modes_report_bytes_and_fill_the_cache(
    model_copy: Path, mode: str, load_mode: str
) -> None:
    size = model_copy.stat().st_size
    before = evict(model_copy)
    with open_checkpoint(model_copy, load_mode=load_mode) as checkpoint:
        seconds, nbytes = warm.warm(checkpoint, mode)
        assert nbytes == size
        assert seconds > 0
        if mode == "willneed":  # asynchronous readahead: only check it did not evict anything
            assert warm.residency(checkpoint) >= before
        else:
            assert warm.residency(checkpoint) > 0.99


def test_auto_warms_nothing_for_a_memory_source(model_copy: Path) -> None:
    with open_checkpoint(model_copy, load_mode="memory") as checkpoint:
        assert warm.resolve_mode(checkpoint, "auto") == "none"
        assert warm.warm(checkpoint, "auto") == (0.0, 0)


def test_residency_counts_resident_pages(model_copy: Path) -> None:
    evict(model_copy)
    page = warm.PAGE_BYTES
    with open(model_copy, "rb") as f:  # read exactly the first 64 pages back in
        f.read(64 * page)
    resident, size = warm.file_residency(model_copy)
    assert size == model_copy.stat().st_size
    assert 64 * page <= resident < size // 2  # readahead may add a little more


def test_populate_falls_back_to_read_through(
    model_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "MADV_POPULATE_READ", 0x7FFF)  # an advice the kernel rejects
    evict(model_copy)
    with open_checkpoint(model_copy) as checkpoint:
        _, nbytes = warm.warm(checkpoint, "populate")
        assert nbytes == model_copy.stat().st_size
        assert warm.residency(checkpoint) > 0.99


def test_warm_in_background_reports_when_done(model_copy: Path) -> None:
    evict(model_copy)
    done: list[tuple[float, int]] = []
    with open_checkpoint(model_copy) as checkpoint:
        thread = warm.warm_in_background(checkpoint, "read", lambda s, n: done.append((s, n)))
        thread.join(timeout=60)
        assert done and done[0][1] == model_copy.stat().st_size
        assert warm.residency(checkpoint) > 0.99


def test_mlock_failure_logs_limit_and_load_goes_on(
    model_copy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """mlock refused (tiny RLIMIT_MEMLOCK) + synchronous warm-up + progress, in one real load."""
    monkeypatch.setattr(warm, "_mlock_call", lambda view: errno.ENOMEM)
    monkeypatch.setattr(warm, "memlock_limit", lambda: 65536)
    calls: list[tuple[int, int]] = []
    cfg = LoadConfig(mlock=True, warmup="populate", warmup_sync=True)
    evict(model_copy)
    with caplog.at_level(logging.INFO, logger="warmload"):
        with open_checkpoint(model_copy) as checkpoint:
            model, stats = load_model(checkpoint, cfg, progress=lambda d, t: calls.append((d, t)))
            assert warm.residency(checkpoint) > 0.99
    text = caplog.text
    assert "mlock of" in text and "RLIMIT_MEMLOCK is 65536 bytes" in text
    assert "ulimit -l" in text
    assert stats.stages["mlock"].nbytes == 0
    assert stats.stages["warm"].nbytes == model_copy.stat().st_size
    assert "loaded " in text  # the LoadStats summary is logged at info
    total = calls[0][1]  # every checkpoint tensor the plan reads (rope factors come after)
    assert calls[-1] == (total, total)
    assert stats.source_nbytes - 1_000_000 < total <= stats.source_nbytes
    assert stats.n_tensors - 1 <= len(calls) <= stats.n_tensors
    assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))
    assert not any(p.device.type == "meta" for p in model.parameters())


def test_load_warms_in_background_after_ready(model_copy: Path) -> None:
    import warmload

    evict(model_copy)
    engine = warmload.load(model_copy, warmup="read")
    try:
        deadline = time.monotonic() + 60
        while "warm" not in engine.load_stats.stages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.load_stats.stages["warm"].nbytes == model_copy.stat().st_size
        assert engine.residency() > 0.99
    finally:
        engine.close()


def test_load_with_sync_auto_warmup(model_copy: Path) -> None:
    import warmload

    evict(model_copy)
    engine = warmload.load(model_copy, warmup="auto", warmup_sync=True)
    try:
        assert engine.load_stats.stages["warm"].nbytes == model_copy.stat().st_size
        assert engine.residency() > 0.99
        assert engine.generate("Hi", max_tokens=2, temperature=0).token_ids
    finally:
        engine.close()
