"""A prompt cache on disk: the sequence memory (KV cache today, a recurrent state later) after
the first N tokens of a prompt, saved so that a later process or another server replica on the
same disk skips that prefill. Follows llama.cpp's `--prompt-cache` / slot save-restore idea,
with the entry keyed by everything the saved numbers depend on:

- the model file (resolved path, size, mtime in ns) and its config (repr of model.config),
- the kernel variant (warmload.kernels.VARIANT when it exists, else "default"),
- the memory's dtype and layout, and the exact token ids of the prefix.

An entry file is `WLPC` + version + header length + a JSON header (the key, the token ids, the
array shapes, the payload length and its CRC-32) + the payload (each array's bytes, in order).
Anything that does not match — truncated, flipped bytes, another model or variant — is ignored
with one warning, never trusted. Writes are atomic (temp file, fsync, rename); a lock file
serialises writers and eviction so replicas sharing the folder cooperate; the folder is kept
under a size bound by removing the least recently used entries (a hit touches its mtime).

The memory object is abstract: `memory_adapter` wraps anything with `snapshot(n)` /
`restore(arrays, n)` methods (a recurrent state implements those), and gives the KV cache
(`.k` / `.v` lists of (batch, heads, ctx, dim) tensors) an adapter of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

MAGIC = b"WLPC"
VERSION = 1
SUFFIX = ".wlpc"
MIN_PREFIX_TOKENS = 64  # shorter prefixes prefill faster than a file round trip pays back
_HEAD = struct.Struct("<4sII")  # magic, version, header length


class SequenceMemory(Protocol):
    """What the prompt cache needs of a sequence's memory (row 0 of it)."""

    def snapshot(self, n_tokens: int) -> list[np.ndarray]:
        """The memory after the first n_tokens, as contiguous arrays (copies)."""
        ...

    def restore(self, arrays: list[np.ndarray], n_tokens: int) -> None:
        """Set the memory to the state snapshot(n_tokens) returned."""
        ...

    def layout(self) -> str:
        """Dtype and shapes that a snapshot must match (part of the cache key)."""
        ...


class KVMemory:
    """SequenceMemory for models.layers.KVCache: keys and values of positions 0..n-1, row 0."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def _tensors(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.cache.k, self.cache.v) for t in pair]

    def snapshot(self, n_tokens: int) -> list[np.ndarray]:
        return [t[0, :, :n_tokens].contiguous().numpy().copy() for t in self._tensors()]

    def restore(self, arrays: list[np.ndarray], n_tokens: int) -> None:
        tensors = self._tensors()
        if len(arrays) != len(tensors):
            raise ValueError(f"{len(arrays)} arrays for {len(tensors)} cache tensors")
        for t, a in zip(tensors, arrays):
            t[0, :, :n_tokens] = torch.from_numpy(a)

    def layout(self) -> str:
        t = self.cache.k[0]
        return f"kv:{len(self.cache.k)}x{tuple(t.shape[1:2])}x{tuple(t.shape[3:])}:{t.dtype}"


def memory_adapter(memory: Any) -> SequenceMemory:
    """The memory itself when it implements SequenceMemory, else the KV cache's adapter."""
    if all(hasattr(memory, m) for m in ("snapshot", "restore", "layout")):
        return memory
    if hasattr(memory, "k") and hasattr(memory, "v"):
        return KVMemory(memory)
    raise TypeError(f"no prompt-cache adapter for {type(memory).__name__}")


def kernel_variant() -> str:
    try:
        from warmload import kernels
    except ImportError:
        return "default"
    return str(getattr(kernels, "VARIANT", "default"))


def model_identity(path: Path, config: Any) -> str:
    """What a cached state of this model depends on: the file(s) and the config."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"{path}|{';'.join(stamps)}|{config!r}|{kernel_variant()}"


def _digest(text: str | bytes, size: int = 16) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def _ids_digest(ids: Sequence[int]) -> str:
    return _digest(np.asarray(ids, dtype="<i8").tobytes())


class PromptCache:
    """One folder of saved prefixes for one model (the folder may be shared by many models)."""

    def __init__(self, folder: Path, identity: str, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.key = identity
        self.model_tag = _digest(identity, 8)
        self.max_bytes = max_bytes
        self._warned = False

    # -- lookup -------------------------------------------------------------------------------
    def _entries(self) -> list[Path]:
        try:
            return [p for p in self.folder.glob(f"{self.model_tag}-*{SUFFIX}")]
        except OSError:
            return []

    def _path(self, ids: Sequence[int], layout: str) -> Path:
        tag = _digest(f"{layout}|{_ids_digest(ids)}", 12)
        return self.folder / f"{self.model_tag}-{len(ids)}-{tag}{SUFFIX}"

    def has(self, ids: Sequence[int], memory: SequenceMemory) -> bool:
        return self._path(ids, memory.layout()).exists()

    def lookup(
        self, ids: Sequence[int], memory: SequenceMemory, longer_than: int = 0
    ) -> tuple[int, list[int]]:
        """Restore the longest saved prefix of ids longer than `longer_than` into memory:
        its length (0: none) and the first positions of the passes that computed it."""
        layout = memory.layout()
        lengths = set()
        for p in self._entries():
            parts = p.name.split("-")
            if len(parts) == 3 and parts[1].isdigit():
                lengths.add(int(parts[1]))
        low = max(MIN_PREFIX_TOKENS, longer_than + 1)
        for n in sorted((n for n in lengths if low <= n <= len(ids)), reverse=True):
            path = self._path(ids[:n], layout)
            if path.exists():
                starts = self._load(path, ids[:n], memory, layout)
                if starts is not None:
                    return n, starts
        return 0, []

    def _load(
        self, path: Path, ids: Sequence[int], memory: SequenceMemory, layout: str
    ) -> list[int] | None:
        try:
            with open(path, "rb") as f:
                magic, version, hlen = _HEAD.unpack(f.read(_HEAD.size))
                if magic != MAGIC or version != VERSION:
                    raise ValueError("not a prompt-cache entry of this version")
                header = json.loads(f.read(hlen))
                if header["key"] != self.key or header["layout"] != layout:
                    raise ValueError("saved for another model, variant or memory layout")
                if header["ids"] != list(ids):
                    raise ValueError("saved for other tokens")
                payload = bytearray(header["nbytes"])  # writable: restored without a copy
                if f.readinto(payload) != len(payload) or f.read(1):
                    raise ValueError("truncated or with trailing bytes")
            if zlib.crc32(payload) != header["crc32"]:
                raise ValueError("checksum mismatch")
            arrays, offset = [], 0
            for shape, dtype in header["arrays"]:
                a = np.frombuffer(payload, dtype=dtype, count=int(np.prod(shape)), offset=offset)
                arrays.append(a.reshape(shape))
                offset += a.nbytes
            starts = [int(s) for s in header["starts"]]
            memory.restore(arrays, len(ids))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            self._warn(f"ignoring prompt-cache entry {path}: {exc}")
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        return starts

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)
        else:
            log.debug(message)

    # -- store --------------------------------------------------------------------------------
    def prepare(
        self, ids: Sequence[int], memory: SequenceMemory, starts: Sequence[int]
    ) -> Callable[[], Path | None] | None:
        """Snapshot the memory after ids now; the returned job writes it (atomically, under
        the folder's lock) and returns its path, or None when that failed. None when the
        prefix is too short or too big for the cache."""
        if len(ids) < MIN_PREFIX_TOKENS:
            return None
        layout = memory.layout()
        path = self._path(ids, layout)
        arrays = memory.snapshot(len(ids))
        nbytes = sum(a.nbytes for a in arrays)
        if nbytes > self.max_bytes:
            return None
        ids = [int(t) for t in ids]

        def job() -> Path | None:
            payload = b"".join(a.tobytes() for a in arrays)
            header = json.dumps(
                {
                    "key": self.key,
                    "layout": layout,
                    "ids": ids,
                    "starts": [int(s) for s in starts],
                    "arrays": [[list(a.shape), a.dtype.str] for a in arrays],
                    "nbytes": len(payload),
                    "crc32": zlib.crc32(payload),
                }
            ).encode()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with self._locked():
                    self._write(path, _HEAD.pack(MAGIC, VERSION, len(header)) + header, payload)
                    self._evict(keep=path)
            except OSError as exc:
                self._warn(f"could not save a prompt-cache entry in {self.folder}: {exc}")
                return None
            return path

        return job

    def save(
        self, ids: Sequence[int], memory: SequenceMemory, starts: Sequence[int] = (0,)
    ) -> Path | None:
        """prepare() and run the job now."""
        job = self.prepare(ids, memory, starts)
        return job() if job is not None else None

    def _write(self, path: Path, head: bytes, payload: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _evict(self, keep: Path) -> None:
        """Remove least recently used entries (any model's) until the folder fits max_bytes."""
        entries = []
        for p in self.folder.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if p == keep or p.name.startswith(".tmp-"):
                continue
            p.unlink(missing_ok=True)
            total -= size

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # no advisory locks here: atomic renames still keep entries whole
            yield
            return
        with open(self.folder / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_prompt_cache(setting: str, path: Path, config: Any, max_gb: float) -> PromptCache | None:
    """The cache for a LoadConfig.prompt_cache setting ("auto", "off" or a folder)."""
    if setting == "off":
        return None
    if setting == "auto":
        from warmload.config import cache_dir

        folder = cache_dir() / "prompts"
    else:
        folder = Path(setting).expanduser()
    return PromptCache(folder, model_identity(path, config), int(max_gb * (1 << 30)))
