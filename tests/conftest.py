"""Shared fixtures: the two real models shipped as PyPI packages and the vocab fixtures."""

from __future__ import annotations

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
