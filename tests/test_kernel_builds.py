"""The kernel variants (setup.py) and their dispatch (warmload/kernels/dispatch.py).

Kernel tests (test_matmul, test_fused, test_attention) run once per variant this CPU runs
through the `kernel_variant` fixture; here: the features the dispatcher reads agree with the
kernel's own view (/proc/cpuinfo), the default is the best runnable variant, a forced variant
that is unknown, not built or not runnable is refused with a message, a variant that does not
compile is dropped at install with the others kept, every x86 variant compiles with gcc and
clang at -O2, and the batch runner's tests pass on the variants other than the default.
"""

from __future__ import annotations

import os
import platform
import runpy
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import setuptools

from warmload import kernels
from warmload.errors import UnsupportedError
from warmload.kernels import dispatch

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def setup_py_globals(monkeypatch) -> dict:
    """setup.py's tables, read by running it with setuptools.setup a no-op."""
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    return runpy.run_path(str(ROOT / "setup.py"))


def test_features_agree_with_proc_cpuinfo():
    """cpuid + xgetbv (or getauxval) against the flags the Linux kernel reports."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = set(line.partition(":")[2].split())
    features = dispatch.cpu_features()
    names = {f for needs in dispatch.machine_variants().values() for f in needs}
    assert names and names <= set(features)
    for name in names:
        assert features[name] == (dispatch._PROC_NAMES.get(name, name) in flags), name
    assert dispatch.cpu_name()


def test_setup_and_dispatch_know_the_same_variants(monkeypatch):
    table = setup_py_globals(monkeypatch)
    assert set(table["X86_VARIANTS"]) == set(dispatch.X86_VARIANTS)
    assert set(table["ARM_VARIANTS"]) == set(dispatch.ARM_VARIANTS)
    assert not any("native" in flag for flags in table["X86_VARIANTS"].values() for flag in flags)


def test_the_default_variant_is_the_best_this_cpu_runs():
    runnable = kernels.runnable_variants()
    assert runnable and runnable[-1] == "generic"  # always built, runs anywhere
    assert set(runnable) <= set(dispatch.built_variants())
    for variant in runnable:
        assert dispatch.missing_features(variant) == []
    if not os.environ.get(dispatch.ENV):
        assert kernels.VARIANT == runnable[0] and kernels.VARIANT_REASON.startswith("best")
    with kernels.use_variant("generic"):
        assert kernels.VARIANT == "generic" and not kernels.GEMM_TYPES
    assert kernels.VARIANT == (os.environ.get(dispatch.ENV) or runnable[0])


def test_a_forced_variant_must_exist_be_built_and_run_here(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "avx9000")
    with pytest.raises(UnsupportedError, match="no such kernel variant.*known: "):
        dispatch.choose()
    best = dispatch.runnable_variants()[0]
    monkeypatch.setenv(dispatch.ENV, best)
    assert dispatch.choose() == dispatch.Choice(best, f"forced by {dispatch.ENV}={best}")
    needs = dispatch.machine_variants()[best]
    if needs:  # a CPU without the best variant's first feature
        monkeypatch.setattr(dispatch, "cpu_features", lambda: {f: False for f in needs})
        with pytest.raises(UnsupportedError, match=f"lacks {needs[0]}.*can run: generic"):
            dispatch.choose()
        monkeypatch.delenv(dispatch.ENV)
        assert dispatch.choose().variant == "generic"
        assert "not runnable" in dispatch.choose().reason
    monkeypatch.setattr(dispatch, "built_variants", lambda: ["generic"])
    monkeypatch.setenv(dispatch.ENV, best if best != "generic" else "native")
    with pytest.raises(UnsupportedError, match="was not built"):
        dispatch.choose()


def test_a_bad_forced_variant_stops_the_import_with_its_message():
    env = {**os.environ, dispatch.ENV: "avx9000"}
    run = subprocess.run(
        [sys.executable, "-c", "import warmload.kernels"], env=env, capture_output=True, text=True
    )
    assert run.returncode != 0 and "WARMLOAD_KERNELS=avx9000: no such kernel" in run.stderr


def test_a_plan_belongs_to_its_variant(tmp_path: Path):
    """A plan's capsule is named after the variant that made it: another refuses it."""
    others = [v for v in kernels.runnable_variants() if v not in (kernels.VARIANT, "generic")]
    if not others or not kernels.DECODE_TAKES_GEMM:
        pytest.skip("one variant with plans only")
    import torch
    from test_loader import llama_file

    from warmload import open_checkpoint
    from warmload.loader import load_model
    from warmload.models import fused

    path, _ = llama_file(tmp_path, tied=False)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck)
    plan = fused.decode_plan(model, model.new_cache(8))
    x = torch.zeros(1, 1, model.config.hidden_size)
    plan.step(x, 0)
    with kernels.use_variant(others[0]), pytest.raises(ValueError, match="incorrect name"):
        plan.step(x, 1)


FAILING_MODULE = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if defined(__AVX2__)
#error "this variant cannot be built"
#endif
#define S_(x) #x
#define S(x) S_(x)
#define INIT_(x) PyInit_##x
#define INIT(x) INIT_(x)
static struct PyModuleDef M = {PyModuleDef_HEAD_INIT, S(WARMLOAD_MODULE), NULL, -1, NULL};
PyMODINIT_FUNC INIT(WARMLOAD_MODULE)(void) { return PyModule_Create(&M); }
"""


@pytest.mark.skipif(not X86 or not shutil.which("cc"), reason="x86 with a C compiler only")
def test_a_variant_that_does_not_compile_is_dropped_and_the_others_kept(tmp_path: Path):
    shutil.copy(ROOT / "setup.py", tmp_path)
    kernel_dir = tmp_path / "warmload" / "kernels"
    (kernel_dir / "features").mkdir(parents=True)
    shutil.copy(ROOT / "warmload/kernels/features/features.c", kernel_dir / "features")
    (kernel_dir / "module.c").write_text(FAILING_MODULE)
    run = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    built = {p.name.split(".")[0] for p in kernel_dir.glob("*.so")}
    assert built == {"_features", "_cpu_generic"}  # every AVX2-based variant fails here
    for variant in ("avx2", "avxvnni", "avx512"):
        assert f"kernel variant warmload.kernels._cpu_{variant} was NOT built" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_every_x86_variant_compiles_at_O2(compiler: str, monkeypatch, tmp_path: Path):
    """gcc -O2 and clang once failed on gemm.c (an intrinsic's immediate from a loop)."""
    if not X86 or not shutil.which(compiler):
        pytest.skip(f"needs {compiler} on x86")
    include = sysconfig.get_paths()["include"]
    sources = sorted((ROOT / "warmload" / "kernels").glob("*.c"))
    for variant, flags in setup_py_globals(monkeypatch)["X86_VARIANTS"].items():
        for source in sources:
            run = subprocess.run(
                [compiler, "-O2", "-std=c11", "-Wall", "-Werror", "-Wno-unused-function",
                 f"-I{include}", *flags, "-c", str(source), "-o", str(tmp_path / "x.o")],
                capture_output=True,
                text=True,
            )  # fmt: skip
            assert run.returncode == 0, f"{variant} {source.name}: {run.stderr[-1500:]}"


@pytest.mark.slow
def test_the_batch_runner_on_the_other_variants():
    """test_batch (ragged passes, rows against single sequences) forced onto each variant with
    the integer product other than the default (the default runs it in the suite)."""
    variants = [
        v for v in kernels.runnable_variants() if v not in (kernels.VARIANT, "generic")
    ]
    if not variants:
        pytest.skip("the default is the only variant with the integer product here")
    for variant in variants:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             "tests/test_batch.py"],
            cwd=ROOT,
            env={**os.environ, dispatch.ENV: variant},
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        assert run.returncode == 0, f"{variant}: {run.stdout[-3000:]}{run.stderr[-2000:]}"
        assert " passed" in run.stdout
