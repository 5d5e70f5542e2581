"""Shared fixtures: the two real models shipped as PyPI packages, the vocab fixtures, and tiny
synthetic GGUF files written by benchmarks/make_synthetic.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
