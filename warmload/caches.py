"""What warmload keeps under cache_dir() ($WARMLOAD_CACHE_DIR, default ~/.cache/warmload), for
`warmload cache list|clear`. Every entry is derived data: removing it only costs the time to
rebuild it on next use.

There is deliberately no cache of converted weights: the packed kernels (warmload.kernels)
compute on the GGUF file's own blocks, so a load converts nothing that a cache could save, and a
second copy of the weights on disk would only double the pages competing for RAM.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from warmload.config import cache_dir
from warmload.errors import RequestError

# name -> (path under cache_dir(), what it holds)
ENTRIES = {
    "models": ("models", "packaged models assembled from their part packages (Gemma 3 270M)"),
    "tokenizer": ("tokenizer", "merges derived from SentencePiece vocabularies, by vocab hash"),
    "threads": ("threads.json", "thread counts tuned by `warmload bench --tune-threads`"),
    "verified": ("verified.json", "SHA-256 verification records of `warmload pull/verify`"),
}


@dataclass(frozen=True, slots=True)
class CacheEntry:
    name: str
    path: Path
    description: str
    nbytes: int
    files: int


def _usage(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def list_caches() -> list[CacheEntry]:
    """Every known entry, present or not (0 files when absent)."""
    root = cache_dir()
    entries = []
    for name, (relative, description) in ENTRIES.items():
        path = root / relative
        nbytes, files = _usage(path)
        entries.append(CacheEntry(name, path, description, nbytes, files))
    return entries


def clear_caches(names: list[str] | None = None) -> list[CacheEntry]:
    """Remove the named entries (all when names is empty or None); returns what was removed."""
    unknown = sorted(set(names or ()) - set(ENTRIES))
    if unknown:
        raise RequestError(
            f"unknown cache {', '.join(unknown)}; known: {', '.join(ENTRIES)}", "names"
        )
    removed = []
    for entry in list_caches():
        if names and entry.name not in names or not entry.files:
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        removed.append(entry)
    return removed
