"""`warmload info` (cli/info.py) and the CLI's honesty about flags it cannot act on (-ngl)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from warmload import kernels
from warmload.cli import main
from warmload.cli.generate import add_model_flags, load_options


def test_info_json_names_the_variant_and_each_path(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kernels"]["variant"] == kernels.VARIANT
    assert report["kernels"]["reason"] == kernels.VARIANT_REASON
    assert set(report["kernels"]["runnable"]) <= set(report["kernels"]["built"])
    assert set(report["paths"]) == {"decode step", "short chunk", "long prompt", "ragged batch"}
    assert report["cpu"]["name"] and report["threads"]["default"] >= 1
    assert report["torch"] is None or report["torch"]["version"]
    if kernels.DECODE_TAKES_GEMM:
        assert kernels.VARIANT in report["paths"]["decode step"]


def test_info_follows_a_forced_variant():
    run = subprocess.run(
        [sys.executable, "-m", "warmload", "info"],
        env={**os.environ, "WARMLOAD_KERNELS": "generic"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "kernel variant      generic" in run.stdout
    assert "forced by WARMLOAD_KERNELS=generic" in run.stdout
    assert "dequantized and dotted in C" in run.stdout  # no integer product in generic C


def test_a_bad_forced_variant_is_an_error_exit_2():
    run = subprocess.run(
        [sys.executable, "-m", "warmload", "info"],
        env={**os.environ, "WARMLOAD_KERNELS": "avx9000"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: WARMLOAD_KERNELS=avx9000")


@pytest.mark.parametrize("ngl", [0, 33])
def test_ngl_warns_once_that_it_does_nothing(ngl: int, capsys, monkeypatch):
    from warmload.cli import generate

    monkeypatch.setattr(generate, "_warned_gpu_layers", False)
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    args = parser.parse_args(["-ngl", str(ngl)])
    first, second = load_options(args), load_options(args)
    assert "n_gpu_layers" not in first and first == second
    err = capsys.readouterr().err
    assert err.count("warning: -ngl") == (1 if ngl else 0)


def test_bench_backends_name_and_force_the_variant(monkeypatch, tmp_path):
    """`warmload bench --variants`: each runs as "warmload[v]" with WARMLOAD_KERNELS=v; a peer
    installed apart goes first on the worker's PYTHONPATH, or is a clear error."""
    from warmload.bench import split_backend, worker_env
    from warmload.cli.bench import warmload_backends
    from warmload.errors import UnsupportedError, WarmloadError

    assert warmload_backends("") == ["warmload"]
    runnable = kernels.runnable_variants()
    assert warmload_backends("all") == [f"warmload[{v}]" for v in runnable]
    with pytest.raises(UnsupportedError, match="avx9000"):
        warmload_backends("avx9000")
    assert split_backend("warmload[avx2]") == ("warmload", "avx2")
    assert split_backend("llama.cpp") == ("llama.cpp", None)
    assert worker_env(f"warmload[{runnable[-1]}]")["WARMLOAD_KERNELS"] == runnable[-1]
    monkeypatch.setenv("WARMLOAD_PEERS_ROOT", str(tmp_path))
    with pytest.raises(WarmloadError, match="make bench-peers"):
        worker_env("llama.cpp-avx2")
    (tmp_path / ".peers" / "llama-avx2").mkdir(parents=True)
    path = worker_env("llama.cpp-avx2")["PYTHONPATH"].split(os.pathsep)[0]
    assert path == str((tmp_path / ".peers" / "llama-avx2").resolve())
