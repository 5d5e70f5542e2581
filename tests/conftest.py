"""Shared fixtures: the two real models shipped as PyPI packages, the vocab fixtures, tiny
synthetic GGUF files written by benchmarks/make_synthetic.py, and `kernel_variant`: a test
that uses it runs once per kernel variant this CPU runs (only the forced one where
WARMLOAD_KERNELS is set)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from warmload import kernels
from warmload.catalog import resolve_model_path

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO.parent / "shared" / "fixtures" / "vocab"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return resolve_model_path("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return resolve_model_path("gemma3-270m")


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    if not VOCAB_DIR.is_dir():
        pytest.skip(f"tokenizer fixtures not found at {VOCAB_DIR}")
    return VOCAB_DIR


@pytest.fixture(scope="session")
def synthetic():
    script = REPO / "benchmarks" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    # the real files' structure (tied, rope_freqs, the Q4_K_M mix) at a size tests can load
    module.MODELS["tiny"] = module.Shape(256, 256, 512, 4, 4, 2, 64, True, True)
    return module


@pytest.fixture(scope="session")
def tiny_files(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    paths = {}
    for file_type in ("f16", "q4_k_m"):
        paths[file_type] = folder / f"tiny-{file_type}.gguf"
        size = synthetic.write_synthetic(paths[file_type], "tiny", file_type)
        assert size == paths[file_type].stat().st_size
    return paths


def _variants() -> list[str]:
    forced = os.environ.get("WARMLOAD_KERNELS")
    return [forced] if forced else kernels.runnable_variants()


@pytest.fixture(params=_variants() or ["none"])
def kernel_variant(request):
    """The test's kernels rebound to one variant (kernels.use_variant), then back."""
    if request.param == "none":
        pytest.skip("no kernel variant was built (make install)")
    with kernels.use_variant(request.param):
        yield request.param
