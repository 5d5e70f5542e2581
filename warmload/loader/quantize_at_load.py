"""Quantize at load, cached: `load(path, quantize="Q4_K_M")` on an F32/F16/BF16 model (a GGUF
file or a Hugging Face folder) maps a quantized GGUF instead, made once and kept in the
converted-weight cache (weight_cache.py) so that the next load maps it zero-copy.

The file is made by warmload's quantizer (quantizer.quantize_checkpoint: llama.cpp's per-tensor
mix, its reference quantizers in C where built, tensor by tensor on a thread pool with a bounded
number of weights in flight, streamed to the output), so the entry is byte-identical to
`warmload quantize SRC DST TYPE`. Type names are llama-quantize's, with its aliases (Q4_K is
Q4_K_M, Q5_K is Q5_K_M, Q3_K is Q3_K_M).

Concurrency: an entry is built under its lock; a second process loading the same model waits
for the lock, finds the entry valid and maps it. A corrupt or stale entry is rebuilt with one
warning. Without a writable cache folder (or with use_cache=False) the file goes to a private
temporary folder removed at exit, with one warning (an info line for use_cache=False).

An already-quantized source is loaded as it is, with a warning, not an error: one --quantize
flag covers every model of `warmload serve`, and requantizing a quantized model loses quality
(`warmload quantize --allow-requantize` does it for whoever wants it). The quantizer lives a
layer above the loader (tests/test_imports.py), so it is imported inside the functions.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import warmload
from warmload.config import LoadConfig
from warmload.errors import RequestError
from warmload.loader import weight_cache
from warmload.loader.weight_cache import Entry

log = logging.getLogger(__name__)

ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}  # llama-quantize's
_FLOAT_TYPES = ("F32", "F16", "BF16")
# What decides the bytes of an entry: a change in any of these files makes a new key.
_QUANTIZER_FILES = (
    "quantizer.py", "hf_convert.py", "hf_vocab.py", "formats/gguf_write.py",
    "quant/quantize.py", "quant/quantize_k.py", "quant/quantize_mix.py",
    "quant/quantize_search.py", "kernels/kquant.c", "kernels/kquant_search.c",
    "kernels/kquant_x8.c",
)  # fmt: skip
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class QuantizedModel:
    """What prepare_quantized did. path: the file to load (the source itself when nothing
    was converted); built: this call quantized; cached: path is a valid cache entry."""

    path: Path
    source: Path
    qtype: str | None
    built: bool
    cached: bool
    seconds: float


def quantize_type(name: str) -> str:
    """A --quantize value as a file type of the quantizer (upper case, aliases resolved)."""
    from warmload.quant.quantize_mix import FILE_TYPES

    qtype = ALIASES.get(name.upper(), name.upper())
    if qtype not in FILE_TYPES:
        known = ", ".join([*FILE_TYPES, *ALIASES])
        raise RequestError(f"--quantize {name!r}: unknown type; choose one of {known}", "quantize")
    return qtype


@functools.cache
def quantizer_version() -> str:
    """warmload's version and a hash of the quantizer's code (imports nothing: a cache hit
    must stay cheap)."""
    root = Path(warmload.__file__).parent
    h = hashlib.sha256()
    for rel in _QUANTIZER_FILES:
        path = root / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return f"{warmload.__version__}+{h.hexdigest()[:16]}"


def _conversion(source: Path, qtype: str) -> str | None:
    """Why the GGUF `source` is loaded as it is ("already ..."), or None to convert it."""
    from warmload.formats.gguf import read_gguf_header
    from warmload.quant.quantize_mix import ModelShape, TensorEntry, plan_types

    ckpt = read_gguf_header(source)
    entries = [TensorEntry(i.name, i.shape, i.ggml_type) for i in ckpt.tensors.values()]
    types = plan_types(entries, qtype, ModelShape.from_metadata(ckpt.metadata))
    changed = {n: ckpt.tensors[n].ggml_type for n, t in types.items()
               if ckpt.tensors[n].ggml_type != t}  # fmt: skip
    quantized = sorted({t for t in changed.values() if t not in _FLOAT_TYPES})
    if quantized:
        return (f"it is already quantized ({', '.join(quantized)}); requantizing loses quality "
                "(`warmload quantize --allow-requantize` does it explicitly)")  # fmt: skip
    if not changed:
        return f"its tensors already have the types of {qtype}"
    return None


def prepare_quantized(
    source: Path,
    qtype: str,
    *,
    use_cache: bool = True,
    threads: int | None = None,
    max_cache_bytes: int = weight_cache.DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> QuantizedModel:
    """The GGUF to load for `source` quantized to `qtype`: a valid cache entry (made now if
    needed), a temporary file (no writable cache), or `source` itself (already quantized)."""
    started = time.perf_counter()
    qtype = quantize_type(qtype)
    build = functools.partial(_build, source, qtype, threads, progress)
    if not use_cache:
        if _loaded_as_is(source, qtype):
            return QuantizedModel(source, source, None, False, False, 0.0)
        log.info("%s: quantizing to %s in a temporary file (caches are off)", source, qtype)
        return _done(source, qtype, _temporary(source, qtype, build), True, False, started)
    root = weight_cache.cache_root()
    entry = weight_cache.entry_for(root, source, qtype, quantizer_version())
    try:
        root.mkdir(parents=True, exist_ok=True)
        with weight_cache.locked(entry, blocking=False):  # a folder we cannot write fails here
            pass
    except OSError as e:
        if weight_cache.check_entry(entry, source, qtype, quantizer_version()) is None:
            return _done(source, qtype, entry.gguf, False, True, started)  # a read-only cache
        if _loaded_as_is(source, qtype):
            return QuantizedModel(source, source, None, False, False, 0.0)
        log.warning("%s: the quantized-weight cache %s cannot be written (%s): quantizing to %s "
                    "in a temporary file, again on the next load", source, root, e.strerror or e,
                    qtype)  # fmt: skip
        return _done(source, qtype, _temporary(source, qtype, build), True, False, started)
    return _cached(entry, source, qtype, build, max_cache_bytes, started)


def _loaded_as_is(source: Path, qtype: str) -> bool:
    """True (with the warning) when the GGUF `source` is not to be converted."""
    reason = None if source.is_dir() else _conversion(source, qtype)
    if reason is not None:
        log.warning("%s: --quantize %s ignored, loading the file as it is: %s",
                    source, qtype, reason)  # fmt: skip
    return reason is not None


def _cached(
    entry: Entry, source: Path, qtype: str, build: Callable[[Path], str], max_bytes: int,
    started: float,
) -> QuantizedModel:  # fmt: skip
    """A hit costs a stat and hashes of the headers; a miss checks the source, then builds
    under the entry's lock unless another process did while this one waited."""
    version = quantizer_version()
    if weight_cache.check_entry(entry, source, qtype, version) is None:
        weight_cache.touch(entry)
        return _done(source, qtype, entry.gguf, False, True, started)
    if _loaded_as_is(source, qtype):
        return QuantizedModel(source, source, None, False, False, 0.0)
    with weight_cache.locked(entry):
        problem = weight_cache.check_entry(entry, source, qtype, version)
        if problem is None:  # another process built it while we waited
            weight_cache.touch(entry)
            return _done(source, qtype, entry.gguf, False, True, started)
        if problem != "missing":
            log.warning("%s: the cached %s file %s is not usable (%s): rebuilding it",
                        source, qtype, entry.gguf, problem)  # fmt: skip
            weight_cache.remove(entry)
        identity = weight_cache.source_identity(source)
        log.info("%s: quantizing to %s into the cache (%s)", source, qtype, entry.gguf)
        try:
            sha256 = build(entry.gguf)
            weight_cache.write_record(entry, identity, qtype, version, sha256)
        except OSError as e:  # a full disk, a folder removed under us: nothing half-written
            weight_cache.remove(entry)
            log.warning(
                "%s: cannot write the quantized-weight cache %s (%s): quantizing to %s in a "
                "temporary file", source, entry.root, e.strerror or e, qtype,
            )  # fmt: skip
            return _done(source, qtype, _temporary(source, qtype, build), True, False, started)
    weight_cache.evict(entry.root, max_bytes, keep=entry.key)
    return _done(source, qtype, entry.gguf, True, True, started)


def _done(source: Path, qtype: str, path: Path, built: bool, cached: bool,
          started: float) -> QuantizedModel:  # fmt: skip
    return QuantizedModel(path, source, qtype, built, cached, time.perf_counter() - started)


def _build(source: Path, qtype: str, threads: int | None, progress: Progress | None,
           dst: Path) -> str:  # fmt: skip
    """Quantize `source` into `dst` (atomically, by the quantizer); returns its SHA-256."""
    from warmload.quantizer import quantize_checkpoint

    def report(done: int, total: int, _name: str) -> None:
        if progress is not None:
            progress(done, total)

    result = quantize_checkpoint(source, dst, qtype, threads=threads, progress=report,
                                 write_sha256_file=False)  # fmt: skip
    log.info("%s: quantized to %s in %.2f s (%d -> %d bytes)", source, qtype, result.seconds,
             result.src_nbytes, result.dst_nbytes)  # fmt: skip
    return result.sha256


@functools.cache
def _private_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="warmload-quantized-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _temporary(source: Path, qtype: str, build: Callable[[Path], str]) -> Path:
    """Build into this process's private temporary folder (one file per source and type: a
    reload replaces it) and return the path."""
    name = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    dst = _private_folder() / f"{name}-{qtype}.gguf"
    build(dst)
    return dst


def resolve_load_path(path: Path, cfg: LoadConfig, progress: Progress | None = None) -> Path:
    """The loader's hook: `path` itself without cfg.quantize, else the quantized file to load."""
    if cfg.quantize is None:
        return path
    return prepare_quantized(
        path, cfg.quantize, use_cache=cfg.use_cache, threads=cfg.threads,
        max_cache_bytes=cfg.quantize_cache_bytes, progress=progress,
    ).path  # fmt: skip
