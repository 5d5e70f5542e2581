"""Thread-count defaults: physical cores, or the tuned value for this machine and model size."""

from __future__ import annotations

import json

import pytest

from warmload import threads


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_untuned_default_is_the_physical_core_count(cache):
    assert threads.tuned_threads(100 << 20) is None
    assert threads.default_threads(100 << 20) == threads.physical_cores()
    assert 1 <= threads.physical_cores() <= len(threads.usable_cpus())


def test_tuned_value_is_used_for_models_of_the_same_size_bucket(cache):
    best = threads.record_tuned_threads(150 << 20, {1: 40.0, 2: 71.5})
    assert best == 2
    assert threads.tuned_threads(200 << 20) == 2  # same 128..256 MiB bucket
    assert threads.tuned_threads(300 << 20) is None  # another bucket
    stored = json.loads((cache / "threads.json").read_text())["entries"]
    entry = stored[threads.machine_key()][threads.size_bucket(150 << 20)]
    assert entry == {"threads": 2, "tokens_per_second": {"1": 40.0, "2": 71.5}}
    assert not list(cache.glob(".threads*"))  # the temp file was renamed away


def test_a_damaged_or_foreign_tuning_file_means_untuned(cache):
    (cache / "threads.json").write_text("{not json")
    assert threads.tuned_threads(1 << 20) is None
    key = threads.machine_key()
    threads.update_record(
        threads.tuning_file(), "threads", threads._valid,
        lambda d: d.update({key: {"2^20": {"threads": 999}}}),
    )  # fmt: skip
    assert threads.tuned_threads(1 << 20) is None  # more threads than CPUs: ignored


@pytest.mark.parametrize(
    "entries",
    [[1, 2], {"K": [1]}, {"K": {"2^20": [4]}}, {"K": {"2^20": {"threads": "4"}}}, {"K": None}],
)
def test_a_tuning_file_of_the_wrong_shape_means_untuned(cache, entries):
    """Issue 17 item 6: wrong JSON shapes used to raise AttributeError on every run."""
    key = threads.machine_key()
    text = json.dumps(entries).replace('"K"', json.dumps(key))
    (cache / "threads.json").write_text(text)  # an old-style or hand-edited file
    assert threads.tuned_threads(1 << 20) is None
    assert threads.default_threads(1 << 20) == threads.physical_cores()
    threads.update_record(
        threads.tuning_file(), "threads", lambda k, v: True,
        lambda d: d.update(json.loads(text)) if isinstance(json.loads(text), dict) else None,
    )  # fmt: skip
    assert threads.tuned_threads(1 << 20) is None  # a checksummed record of the wrong shape
    assert threads.record_tuned_threads(1 << 20, {1: 5.0}) == 1
    assert threads.tuned_threads(1 << 20) == 1


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "file"))
    assert threads.record_tuned_threads(1 << 20, {1: 5.0, 2: 9.0}) == 2
    assert threads.tuned_threads(1 << 20) is None


def test_cache_list_and_clear(cache, capsys):
    from warmload.cli import main

    threads.record_tuned_threads(1 << 20, {1: 5.0})
    (cache / "tokenizer").mkdir()
    (cache / "tokenizer" / "abc.json").write_text("x" * 10)
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "| threads " in listing and "| tokenizer " in listing and str(cache) in listing
    assert main(["cache", "clear", "tokenizer"]) == 0
    assert "removed tokenizer: 10 B in 1 file(s)" in capsys.readouterr().out
    assert not (cache / "tokenizer").exists() and (cache / "threads.json").exists()
    assert main(["cache", "clear"]) == 0
    assert not (cache / "threads.json").exists()
    assert main(["cache", "clear", "weights"]) == 2
    assert "unknown cache weights" in capsys.readouterr().err
