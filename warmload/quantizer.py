"""quantize_checkpoint(src, dst, qtype): a GGUF in F32/F16/BF16 (or quantized, when allowed),
or a Hugging Face model folder (converted on the way by hf_convert) -> a GGUF of one of
llama.cpp's file types, written atomically, with its SHA-256.

Follows llama.cpp's llama_model_quantize (src/llama-quant.cpp): the same per-tensor types
(quant/quantize_mix.py), tensors in the same order (layer, then name), every metadata pair
copied with its type, then general.quantization_version = 2 and general.file_type set. Tensor
bytes come from warmload.quant.quantize, bit-identical to llama.cpp's reference quantizers, so
the files are byte-identical to llama-quantize's (tests check). The output goes to a temporary
file beside `dst`, renamed only when complete, so an error, a full disk or Ctrl-C never leaves
a partial `dst`. Before the rename the output is read back (verify_output: its header, its
tensor table, and for converted folders its hyperparameters), so a file the loader would refuse
is never written; `dst.sha256` (sha256sum format) is written after. Write errors are OutputError
naming the path. Tensors are cut into
chunks that run on a thread pool (numpy releases the GIL), several tensors in flight at once,
while a writer thread writes and hashes what is done, in order.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmload.errors import (
    CheckpointError,
    OutputError,
    RequestError,
    UnsupportedError,
    WarmloadError,
)
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.formats.ggml_types import GGML_TYPES
from warmload.formats.gguf_write import (
    GGUFWriter,
    RawKV,
    TensorSpec,
    atomic_output,
    encode_kv,
    read_raw_kv,
)
from warmload.quant.quantize import default_threads, submit_quantize
from warmload.quant.quantize_mix import (
    FILE_TYPES,
    MixOptions,
    ModelShape,
    TensorEntry,
    layer_sort_key,
    plan_types,
)

GGML_QNT_VERSION = 2
_SLAB_WEIGHTS = 1 << 24  # rows are converted and quantized in slabs of about this many weights
_IN_FLIGHT_WEIGHTS = 1 << 25  # weights queued for the workers ahead of the writer
_DROPPED_KEYS = ("general.file_type", "general.quantization_version", "split.no", "split.count",
                 "split.tensors.count")  # fmt: skip
_FLOAT_SOURCES = ("F32", "F16", "BF16")

Progress = Callable[[int, int, str], None]  # (weights done, weights total, tensor name)


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    path: Path
    sha256: str
    file_type: str
    src_nbytes: int  # file sizes
    dst_nbytes: int
    n_weights: int  # elements of all tensors
    tensor_nbytes: int  # bytes of tensor data in the output (no metadata, no padding)
    seconds: float
    tensor_types: dict[str, str]  # name -> GGML type in the output

    @property
    def bits_per_weight(self) -> float:
        """As llama.cpp reports it: tensor bytes * 8 / elements."""
        return self.tensor_nbytes * 8 / max(1, self.n_weights)


@dataclass(slots=True)
class _Source:
    """What the quantizer reads: metadata pairs to copy, tensors (GGUF names) and their bytes."""

    path: Path
    kv: list[RawKV]  # without general.file_type and the other keys it sets itself
    metadata: dict[str, Any]  # GGUF keys -> values (the mix rules read the hyperparameters)
    tensors: dict[str, TensorInfo]
    tensor_bytes: Callable[[str], Any]
    close: Callable[[], None]


def _open_gguf(src: Path) -> _Source:
    try:
        from warmload.formats.open import open_checkpoint
    except ImportError:  # the format dispatcher is not there: GGUF only
        from warmload.formats.gguf import read_gguf as open_checkpoint
    ckpt: Checkpoint = open_checkpoint(src)
    if ckpt.format != "gguf":
        ckpt.close()
        raise UnsupportedError(
            f"{src}: a lone SafeTensors file has no config or tokenizer; pass the model's folder "
            "(config.json, tokenizer.json, *.safetensors) instead"
        )
    kv = [item for item in read_raw_kv(src) if item.key not in _DROPPED_KEYS]
    return _Source(src, kv, ckpt.metadata, ckpt.tensors, ckpt.tensor_bytes, ckpt.close)


def _open(src: Path) -> _Source:
    """A GGUF file as it is, or a Hugging Face folder converted on the fly (hf_convert)."""
    if not src.is_dir():
        return _open_gguf(src)
    from warmload.hf_convert import open_hf_folder

    hf = open_hf_folder(src)
    kv = [item for item in hf.kv if item.key not in _DROPPED_KEYS]
    return _Source(src, kv, hf.metadata, hf.tensors, hf.tensor_bytes, hf.close)


def _check_source(ckpt: _Source, types: dict[str, str], allow_requantize: bool) -> None:
    requant = sorted(
        n for n, t in types.items()
        if ckpt.tensors[n].ggml_type != t and ckpt.tensors[n].ggml_type not in _FLOAT_SOURCES
    )  # fmt: skip
    if requant and not allow_requantize:
        kinds = sorted({ckpt.tensors[n].ggml_type for n in requant})
        raise RequestError(
            f"{ckpt.path}: {len(requant)} tensor(s) to convert are already quantized "
            f"({', '.join(kinds)}, e.g. {requant[0]!r}); requantizing loses quality: pass "
            "allow_requantize=True (--allow-requantize) to do it anyway",
            "allow_requantize",
        )


def _as_float(raw: memoryview, info: TensorInfo, shape: tuple[int, ...]) -> np.ndarray:
    """A slab of a source tensor's rows as a float array: F32 and F16 without copying (the
    quantizer's workers convert F16 chunk by chunk), BF16 and quantized types as float32."""
    t = info.ggml_type
    if t == "F32":
        return np.frombuffer(raw, np.float32).reshape(shape)
    if t == "F16":
        return np.frombuffer(raw, np.float16).reshape(shape)
    if t == "BF16":
        u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    from warmload.quant.dequant import dequantize  # torch: only for requantization

    return dequantize(raw, t, shape).numpy()


def _slabs(info: TensorInfo) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of about _SLAB_WEIGHTS weights each (whole blocks)."""
    row = info.shape[-1] if info.shape else 1
    n_rows = info.n_elements // max(1, row)
    per = max(1, _SLAB_WEIGHTS // max(1, row))
    return [(r, min(r + per, n_rows)) for r in range(0, n_rows, per)]


@dataclass(slots=True)
class _Pending:
    """A tensor whose slabs are being quantized: (first row, wait for the blocks) per slab."""

    info: TensorInfo
    parts: list[tuple[int, Callable[[], Any]]]


def _submit(src: _Source, info: TensorInfo, new_type: str, pool: Executor) -> _Pending:
    raw = src.tensor_bytes(info.name)
    if new_type == info.ggml_type:
        return _Pending(info, [(0, lambda: raw)])
    row = info.shape[-1] if info.shape else 1
    row_bytes = GGML_TYPES[info.ggml_type].nbytes(row)
    parts = []
    for start, stop in _slabs(info):
        x = _as_float(raw[start * row_bytes : stop * row_bytes], info, (stop - start, row))
        parts.append((start, submit_quantize(x, new_type, pool, check_finite=True)))
    return _Pending(info, parts)


def _finish(w: GGUFWriter, src: _Source, p: _Pending) -> None:
    """Wait for a tensor's slabs and hand its bytes to the writer."""
    blocks = []
    for start, result in p.parts:
        try:
            blocks.append(result())
        except CheckpointError as e:
            raise CheckpointError(
                f"{src.path}: tensor {p.info.name!r} (from row {start}): {e}; refusing to "
                "quantize it"
            ) from e
    w.write_tensor(p.info.name, np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0])


def _write_tensors(
    w: GGUFWriter, src: _Source, order: list[TensorInfo], types: dict[str, str],
    pool: Executor, progress: Progress | None,
) -> None:  # fmt: skip
    """Quantize and write every tensor in order, keeping up to _IN_FLIGHT_WEIGHTS weights
    queued on the pool so that workers never wait for the next (small) tensor."""
    total = sum(i.n_elements for i in order)
    pending: deque[_Pending] = deque()
    in_flight = done = 0
    for info in order:
        pending.append(_submit(src, info, types[info.name], pool))
        in_flight += info.n_elements
        while pending and (in_flight > _IN_FLIGHT_WEIGHTS or info is order[-1]):
            p = pending.popleft()
            _finish(w, src, p)
            in_flight -= p.info.n_elements
            done += p.info.n_elements
            if progress:
                progress(done, total, p.info.name)


def _write_converted(
    w: GGUFWriter, src: _Source, order: list[TensorInfo], types: dict[str, str],
    pool: Executor, progress: Progress | None,
) -> None:  # fmt: skip
    """_write_tensors; for a Hugging Face folder, config values that do not fit its weights
    (a reshape that fails) are a CheckpointError naming the folder, not a traceback."""
    if not src.path.is_dir():
        return _write_tensors(w, src, order, types, pool, progress)
    try:
        _write_tensors(w, src, order, types, pool, progress)
    except (ValueError, ZeroDivisionError, IndexError) as e:
        raise CheckpointError(
            f"{src.path}: config.json does not fit the weights ({type(e).__name__}: {e})"
        ) from e


def _output_kv(src: _Source, file_type_id: int) -> list[RawKV]:
    kv = list(src.kv)
    kv.append(encode_kv("general.quantization_version", GGML_QNT_VERSION))
    kv.append(encode_kv("general.file_type", file_type_id))
    return kv


def _source_nbytes(src: Path) -> int:
    if src.is_dir():
        return sum(p.stat().st_size for p in src.glob("*.safetensors"))
    return src.stat().st_size


def _check_paths(src: Path, dst: Path) -> None:
    if not src.exists():
        raise RequestError(f"{src}: no such file or folder", "src")
    if src.resolve() == dst.resolve():
        raise RequestError(f"output {dst} is the input file", "dst")
    if not dst.parent.is_dir() or dst.is_dir():
        raise RequestError(f"cannot write {dst}: no such folder, or it is a folder", "dst")


def quantize_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str,
    *,
    allow_requantize: bool = False,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Sequence[tuple[str, str]] = (),
    threads: int | None = None,
    progress: Progress | None = None,
    write_sha256_file: bool = True,
) -> QuantizeResult:
    """Quantize `src` to the GGUF `dst` as file type `qtype` (a key of FILE_TYPES, e.g.
    "Q4_K_M"). src: a GGUF file, or a Hugging Face model folder (config.json, tokenizer.json,
    *.safetensors) that is converted on the way (warmload.hf_convert).

    tensor_types: (regex, GGML type) pairs; the first pattern found in a tensor's name picks its
    type. progress(done, total, tensor) is called as tensors are written.
    """
    t0 = time.perf_counter()
    qtype = qtype.upper()
    if qtype not in FILE_TYPES:
        raise RequestError(
            f"unknown type {qtype!r}; choose one of {', '.join(FILE_TYPES)}", "qtype"
        )
    src_p, dst_p = Path(src), Path(dst)
    _check_paths(src_p, dst_p)
    opts = MixOptions(pure, output_tensor_type, token_embedding_type, tuple(tensor_types))
    source = _open(src_p)
    try:
        entries = [TensorEntry(i.name, i.shape, i.ggml_type) for i in source.tensors.values()]
        types = plan_types(entries, qtype, ModelShape.from_metadata(source.metadata), opts)
        _check_source(source, types, allow_requantize)
        order = sorted(source.tensors.values(), key=lambda i: layer_sort_key(i.name))
        specs = [TensorSpec(i.name, i.shape, types[i.name]) for i in order]
        pool = ThreadPoolExecutor(threads or default_threads())
        try:
            with atomic_output(dst_p) as tmp, open(tmp, "wb") as f:
                kv = _output_kv(source, FILE_TYPES[qtype][0])
                with GGUFWriter(f, kv, specs, background=True) as w:
                    _write_converted(w, source, order, types, pool, progress)
                    digest = w.finish()
                f.flush()
                verify_output(tmp, dst_p, specs, check_hparams=src_p.is_dir())
        except OSError as e:  # disk full, read-only: typed, with the path; the temp is gone
            raise OutputError(
                f"{dst_p}: {e.strerror or e} while writing it from {src_p}; nothing was "
                "written (free some space or choose another folder)"
            ) from e
        finally:  # an error or Ctrl-C: drop the queued chunks instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        source.close()
    if write_sha256_file:
        try:
            write_sha256(dst_p, digest)
        except OSError as e:
            raise OutputError(
                f"{dst_p}.sha256: {e.strerror or e}; {dst_p} itself is complete and was read "
                f"back, its sha256 is {digest}"
            ) from e
    return QuantizeResult(
        path=dst_p, sha256=digest, file_type=qtype, src_nbytes=_source_nbytes(src_p),
        dst_nbytes=dst_p.stat().st_size, n_weights=sum(i.n_elements for i in order),
        tensor_nbytes=sum(s.nbytes for s in specs), seconds=time.perf_counter() - t0,
        tensor_types={s.name: s.ggml_type for s in specs},
    )  # fmt: skip


def verify_output(
    tmp: Path, dst: Path, specs: Sequence[TensorSpec], check_hparams: bool = False
) -> None:
    """Read the written file back as the loader will, before it is renamed onto `dst`: the
    GGUF header parses (alignment, offsets, sizes), it lists exactly the tensors written, and
    (check_hparams, for converted folders: a GGUF source's metadata is copied as it is) the
    loader's config, build and plan stages accept it. The same error type, naming `dst`,
    otherwise; nothing is left behind."""
    from warmload.formats.gguf import read_gguf_header

    try:
        written = read_gguf_header(tmp)
        if check_hparams:
            from warmload.loader import check_loadable  # torch: conversions only

            check_loadable(written)
    except WarmloadError as e:
        message = str(e).replace(str(tmp), str(dst))
        error = type(e) if type(e) in (CheckpointError, UnsupportedError) else CheckpointError
        raise error(f"{dst}: the output would not load ({message}); nothing was written") from e
    got = sorted((t.name, t.ggml_type, tuple(t.shape)) for t in written.tensors.values())
    want = sorted((s.name, s.ggml_type, tuple(s.shape)) for s in specs)
    if got != want:
        raise CheckpointError(f"{dst}: the written tensor table does not read back as written")


def write_sha256(path: Path, digest: str) -> Path:
    """Write `path`.sha256 in sha256sum's format ("<hex>  <name>"), atomically."""
    out = path.with_name(path.name + ".sha256")
    with atomic_output(out) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return out


def describe(result: QuantizeResult) -> dict[str, Any]:
    """The numbers the CLI prints: sizes, bits per weight, SHA-256, seconds."""
    return {
        "path": str(result.path),
        "file_type": result.file_type,
        "sha256": result.sha256,
        "src_bytes": result.src_nbytes,
        "dst_bytes": result.dst_nbytes,
        "bits_per_weight": round(result.bits_per_weight, 4),
        "seconds": round(result.seconds, 3),
        "weights_per_s": round(result.n_weights / max(result.seconds, 1e-9)),
    }
