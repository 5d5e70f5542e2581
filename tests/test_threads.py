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


def fake_sys(tmp_path, cpus: dict[int, tuple[int, int]], files: dict[str, dict[int, int]]):
    """A /sys/devices/system/cpu tree: cpu -> (package, core) topology, plus per-CPU files."""
    root = tmp_path / "devices" / "system" / "cpu"
    for cpu, (package, core) in cpus.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
        for name, values in files.items():
            (root / f"cpu{cpu}" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / f"cpu{cpu}" / name).write_text(f"{values[cpu]}\n")
    return root


def test_hybrid_intel_counts_performance_cores_by_the_cpu_core_list(tmp_path, monkeypatch):
    """i7-1260P-like: 4 P-cores with SMT (CPUs 0-7) and 8 E-cores (8-15)."""
    cpus = {c: (0, c // 2) for c in range(8)} | {c: (0, 100 + c) for c in range(8, 16)}
    root = fake_sys(tmp_path, cpus, {})
    (tmp_path / "devices" / "cpu_core").mkdir()
    (tmp_path / "devices" / "cpu_core" / "cpus").write_text("0-7\n")
    monkeypatch.setattr(threads, "usable_cpus", lambda: list(range(16)))
    monkeypatch.setattr(threads.sys, "platform", "linux")
    assert threads.performance_cpus(list(range(16)), root) == list(range(8))
    assert threads.physical_cores(root) == 4


@pytest.mark.parametrize(
    ("name", "speeds", "want"),
    [
        ("cpu_capacity", [1024] * 2 + [870] * 2 + [380] * 4, 4),  # big.LITTLE phone: 2+2+4
        ("cpufreq/cpuinfo_max_freq", [4700000] * 4 + [3400000] * 4, 4),  # P 4.7 / E 3.4 GHz
        ("cpufreq/cpuinfo_max_freq", [5000000, 5100000, 4900000, 5000000], 4),  # favoured cores
        ("cpu_capacity", [1024] * 6, 6),  # not hybrid
    ],
)
def test_efficiency_cores_are_left_out(tmp_path, monkeypatch, name, speeds, want):
    n = len(speeds)
    root = fake_sys(tmp_path, {c: (0, c) for c in range(n)}, {name: dict(enumerate(speeds))})
    monkeypatch.setattr(threads, "usable_cpus", lambda: list(range(n)))
    monkeypatch.setattr(threads.sys, "platform", "linux")
    assert threads.physical_cores(root) == want


def test_no_topology_counts_usable_cpus_and_more_than_64_cores_cap_at_64(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: list(range(192)))
    monkeypatch.setattr(threads.sys, "platform", "linux")
    monkeypatch.setattr(threads, "_SYS_CPU", tmp_path / "none")
    assert threads.physical_cores(tmp_path / "none") == 192
    assert threads.default_threads() == threads.MAX_KERNEL_THREADS == 64


def test_the_kernels_take_the_default_thread_count(monkeypatch):
    from warmload import kernels

    if not kernels.AVAILABLE:
        pytest.skip("the C extension is not built")
    monkeypatch.setattr(threads, "physical_cores", lambda: 256)
    before = kernels._cpu.get_threads()
    try:
        kernels.set_threads(threads.default_threads())
        assert kernels._cpu.get_threads() == 64
    finally:
        kernels.set_threads(before)


def test_macos_counts_performance_cores_by_sysctl(monkeypatch):
    values = {"hw.perflevel0.physicalcpu": 8, "hw.physicalcpu": 12}
    monkeypatch.setattr(threads.sys, "platform", "darwin")
    monkeypatch.setattr(threads.oscalls, "sysctl_int", values.get)
    assert threads.physical_cores() == 8  # an M3 Pro-like 8 P + 4 E
    del values["hw.perflevel0.physicalcpu"]  # Intel Macs: no perf levels
    assert threads.physical_cores() == 12


def test_without_sched_getaffinity_every_cpu_is_usable(monkeypatch):
    monkeypatch.delattr(threads.oscalls.os, "sched_getaffinity")
    assert threads.usable_cpus() == list(range(threads.oscalls.os.cpu_count() or 1))
