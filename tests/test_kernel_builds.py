"""The kernels as machines without AVX-512 build them: the extension compiled again with
-mno-avx512f (AVX-VNNI: the many-token product through its buffer path) and with
-mno-avx512f -mno-avxvnni (AVX2 only: per-row dots, no many-token product), and the kernel
tests run against each build in a subprocess. `make install` builds for this machine only, so
without this the other code paths of gemm.c and quants.c would never be compiled here (a
recursion in the AVX-VNNI path once went unnoticed that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from warmload import kernels

ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"avx-vnni": ["-mno-avx512f"], "avx2": ["-mno-avx512f", "-mno-avxvnni"]}


def cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_kernels_built_for_a_smaller_cpu(build: str, tmp_path: Path):
    if not kernels.DECODE_TAKES_GEMM or not cpu_has("avx_vnni"):
        pytest.skip("this machine's own build already is the smaller one")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    package = tmp_path / "warmload"
    shutil.copytree(ROOT / "warmload", package, ignore=shutil.ignore_patterns("*.so"))
    shutil.copytree(ROOT / "tests", tmp_path / "tests")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    library = package / "kernels" / Path(kernels._cpu.__file__).name
    sources = sorted(str(p) for p in (ROOT / "warmload" / "kernels").glob("*.c"))
    include = sysconfig.get_paths()["include"]
    flags = ["-O3", "-march=native", *BUILDS[build], "-std=c11", "-shared", "-fPIC"]
    subprocess.run(
        [compiler, *flags, f"-I{include}", *sources, "-o", str(library), "-lpthread"],
        check=True,
        capture_output=True,
    )
    tests = ["tests/test_matmul.py", "tests/test_batch.py", "tests/test_fused.py"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *tests,
            "-k",
            "not extension_is_built",
        ],  # fmt: skip
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
