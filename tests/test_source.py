"""Byte sources and open_checkpoint: the three load modes give identical bytes on the real
models, mmap mode reads nothing on open, close() is safe with live views, and the format is
picked by magic bytes (errors name the file)."""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from test_gguf import small_model, write

from warmload.errors import CheckpointError, RequestError
from warmload.formats.open import detect_format, open_checkpoint
from warmload.formats.source import MemorySource, MmapSource, ReadSource, open_source

MODES = ("mmap", "memory", "read")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mapped(path: Path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path.resolve()) in f.read()


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_modes_give_identical_bytes(model: str, smollm2_path: Path, gemma3_path: Path) -> None:
    path = smollm2_path if model == "smollm2" else gemma3_path
    cks = [open_checkpoint(path, load_mode=m) for m in MODES]
    try:
        assert [type(ck.source) for ck in cks] == [MmapSource, MemorySource, ReadSource]
        total = 0
        digest = {m: hashlib.sha256() for m in MODES}
        for name, info in cks[0].tensors.items():
            views = [ck.tensor_bytes(name) for ck in cks]
            assert all(len(v) == info.nbytes for v in views)
            arrays = [np.frombuffer(v, dtype=np.uint8) for v in views]
            assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])
            for m, v in zip(MODES, views):
                if name == "output_norm.weight":
                    digest[m].update(v)
            total += info.nbytes
        assert len({d.hexdigest() for d in digest.values()}) == 1
        assert total == sum(t.nbytes for t in cks[0].tensors.values())
    finally:
        for ck in cks:
            ck.close()
    if model == "smollm2":  # golden, also checked against gguf-py in test_gguf.py
        expected = "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559"
        assert digest["read"].hexdigest() == expected


def test_mmap_open_reads_nothing_and_memory_reads_all(gemma3_path: Path) -> None:
    size = gemma3_path.stat().st_size
    with open_checkpoint(gemma3_path, load_mode="mmap") as ck:
        before = rss_bytes()
        views = [ck.tensor_bytes(name) for name in ck.tensors]
        assert rss_bytes() - before < 8 << 20  # views of 250 MB, pages untouched
        assert sum(len(v) for v in views) > 0.9 * size
        del views
    with open_checkpoint(gemma3_path, load_mode="memory") as ck:
        before = rss_bytes()
        ck.tensor_bytes("output_norm.weight")
        ck.source.wait()  # the rest arrives in the background
        assert rss_bytes() - before > 0.9 * size  # the whole file is now in our buffer
        assert not mapped(gemma3_path)


@pytest.mark.parametrize("mode", MODES)
def test_close_is_safe_with_live_views(tmp_path: Path, mode: str) -> None:
    path = write(tmp_path, small_model())
    ck = open_checkpoint(path, load_mode=mode)
    view = ck.tensor_bytes("c.weight")
    ck.close()
    ck.close()  # twice is fine
    assert bytes(view) == bytes(range(128, 144))  # a view handed out stays valid
    with pytest.raises(CheckpointError, match=r"model.gguf: the checkpoint was closed"):
        ck.tensor_bytes("c.weight")
    if mode == "mmap":
        assert mapped(path)  # kept alive by the view...
        del view
        gc.collect()
        assert not mapped(path)  # ...and unmapped once it is gone


def test_mmap_close_without_views_unmaps(tmp_path: Path) -> None:
    path = write(tmp_path, small_model())
    with open_checkpoint(path) as ck:
        assert bytes(ck.tensor_bytes("a.weight")) == bytes(range(32))
        assert mapped(path)
    assert not mapped(path)


def test_writability_per_mode(tmp_path: Path) -> None:
    path = write(tmp_path, small_model())
    for mode, writable in (("mmap", False), ("memory", True), ("read", True)):
        with open_checkpoint(path, load_mode=mode) as ck:
            assert ck.tensor_bytes("a.weight").readonly is not writable, mode
    with open_checkpoint(path, load_mode="read") as ck:  # read: each view its own buffer
        a, b = ck.tensor_bytes("a.weight"), ck.tensor_bytes("a.weight")
        a[0] = 99
        assert b[0] == 0


def test_one_source_serves_several_files(smollm2_path: Path, tmp_path: Path) -> None:
    other = write(tmp_path, small_model())
    for mode in MODES:
        with open_source(mode) as source:
            assert bytes(source.view(str(smollm2_path), 0, 4)) == b"GGUF"
            assert bytes(source.view(str(other), 0, 4)) == b"GGUF"
            assert source.file_size(str(other)) == len(small_model())


@pytest.mark.parametrize("mode", MODES)
def test_file_truncated_after_open(tmp_path: Path, mode: str) -> None:
    path = write(tmp_path, small_model())
    with open_checkpoint(path, load_mode=mode) as ck:
        os.truncate(path, ck.data_offset + 40)
        assert bytes(ck.tensor_bytes("a.weight")) == bytes(range(32))
        with pytest.raises(CheckpointError, match=r"bytes \d+\.\.\d+ asked for, but the file has"):
            ck.tensor_bytes("c.weight")


def test_bad_load_mode() -> None:
    with pytest.raises(RequestError, match=r"load_mode must be one of mmap, memory, read"):
        open_source("mmapp")
    with pytest.raises(RequestError) as info:
        open_checkpoint("whatever.gguf", load_mode="fast")
    assert info.value.param == "load_mode"


# --- open_checkpoint: the format by magic bytes ----------------------------------------------


def test_detect_format(tmp_path: Path, smollm2_path: Path) -> None:
    assert detect_format(smollm2_path) == "gguf"
    st = write(tmp_path, (2).to_bytes(8, "little") + b"{}", "x.safetensors")
    assert detect_format(st) == "safetensors"
    folder = tmp_path / "one"
    folder.mkdir()
    write(folder, small_model(), "m.gguf")
    assert detect_format(folder) == "gguf"
    with open_checkpoint(folder) as ck:
        assert ck.path == folder / "m.gguf" and len(ck.tensors) == 3


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, r"missing.bin: no such file or directory"),
        (b"", r"empty.bin: the file is empty"),
        (
            b"<html>not a model</html>",
            r"junk.bin: not a GGUF or SafeTensors model \(starts with 3c",
        ),
        (b"GGU", r"short.bin: not a GGUF or SafeTensors model"),
    ],
    ids=["missing", "empty", "junk", "short"],
)
def test_open_errors_name_the_file(tmp_path: Path, content: bytes | None, pattern: str) -> None:
    name = pattern.split(":")[0]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=pattern):
        open_checkpoint(path)


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no model weights here"):
        open_checkpoint(tmp_path)
    write(tmp_path, small_model(), "a.gguf")
    write(tmp_path, small_model(), "b.gguf")
    with pytest.raises(CheckpointError, match=r"holds 2 .gguf files \(a.gguf, b.gguf\)"):
        open_checkpoint(tmp_path)


def test_memory_source_streams_and_reports_a_short_read(tmp_path: Path, monkeypatch) -> None:
    """Views wait only for their own bytes; a file that ends early fails the views past it."""
    import warmload.formats.source as source_module

    path = tmp_path / "blob"
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    monkeypatch.setattr(source_module, "_CHUNK_BYTES", 1024)
    real_stat = os.stat
    monkeypatch.setattr(  # the file "shrinks" after its size was taken
        source_module.os, "stat", lambda p: os.stat_result((*real_stat(p)[:6], 12_000, 0, 0, 0))
    )
    with MemorySource() as source:
        assert bytes(source.view(str(path), 5000, 100)) == data[5000:5100].tobytes()
        with pytest.raises(CheckpointError, match="read 10000 of 12000 bytes, then the file ended"):
            source.view(str(path), 11_000, 10)
        with pytest.raises(CheckpointError, match="then the file ended"):
            source.wait()


@pytest.mark.parametrize("mode", ["memory", "read"])
def test_pieces_read_in_parallel_give_the_file(tmp_path: Path, monkeypatch, mode: str) -> None:
    """Ranges of many pieces, read by several threads, arrive whole and in place; a file that
    ends inside a range names the byte where it ended."""
    import warmload.formats.source as source_module

    path = tmp_path / "blob"
    data = np.random.default_rng(1).integers(0, 256, 100_003, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    monkeypatch.setattr(source_module, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(source_module, "FILL_READERS", 3)
    monkeypatch.setattr(source_module, "READ_SPLIT", 3)
    with open_source(mode) as source:
        for offset, nbytes in ((0, 100_003), (777, 50_000), (99_000, 1003), (5, 0)):
            view = source.view(str(path), offset, nbytes)
            assert bytes(view) == data[offset : offset + nbytes].tobytes()
            assert not view.readonly
    with open_source("read") as source:
        source.view(str(path), 0, 1)  # opened: the size is taken
        os.truncate(path, 60_000)
        with pytest.raises(CheckpointError, match=r"read 59000 of 90000 bytes at byte 1000, then"):
            source.view(str(path), 1000, 90_000)
