"""quantize_checkpoint(src, dst, qtype): a GGUF in F32/F16/BF16 (or quantized, when allowed)
-> a GGUF of one of llama.cpp's file types, written atomically, with its SHA-256.

Follows llama.cpp's llama_model_quantize (src/llama-quant.cpp): the same per-tensor types
(quant/quantize_mix.py), tensors in the same order (layer, then name), every metadata pair
copied with its type, then general.quantization_version = 2 and general.file_type set. Tensor
bytes come from warmload.quant.quantize, bit-identical to llama.cpp's reference quantizers, so
the files are byte-identical to llama-quantize's (tests check). The output goes to a temporary
file beside `dst`, renamed only when complete, so an error, a full disk or Ctrl-C never leaves
a partial `dst`; `dst.sha256` (sha256sum format) is written after.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, RequestError, UnsupportedError
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
from warmload.quant.quantize import default_threads, quantize
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


def _open(src: Path) -> Checkpoint:
    try:
        from warmload.formats.open import open_checkpoint
    except ImportError:  # the format dispatcher is not there: GGUF only
        from warmload.formats.gguf import read_gguf as open_checkpoint
    return open_checkpoint(src)


def _check_source(ckpt: Checkpoint, types: dict[str, str], allow_requantize: bool) -> None:
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


def _write_tensor(
    w: GGUFWriter, ckpt: Checkpoint, info: TensorInfo, new_type: str, pool: ThreadPoolExecutor,
    done: int, total: int, progress: Progress | None,
) -> int:  # fmt: skip
    """Copy or convert one tensor slab by slab; return the weights done after it."""
    raw = ckpt.tensor_bytes(info.name)
    if new_type == info.ggml_type:
        w.write_tensor(info.name, raw)
        done += info.n_elements
        if progress:
            progress(done, total, info.name)
        return done
    src_t = GGML_TYPES[info.ggml_type]
    row = info.shape[-1] if info.shape else 1
    row_bytes = src_t.nbytes(row)
    parts = []
    for start, stop in _slabs(info):
        x = _as_float(raw[start * row_bytes : stop * row_bytes], info, (stop - start, row))
        try:
            parts.append(quantize(x, new_type, executor=pool, check_finite=True))
        except CheckpointError as e:
            raise CheckpointError(
                f"{ckpt.path}: tensor {info.name!r} (from row {start}): {e}; refusing to "
                "quantize it"
            ) from e
        done += x.size
        if progress:
            progress(done, total, info.name)
    w.write_tensor(info.name, np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0])
    return done


def _output_kv(src: Path, file_type_id: int) -> list[RawKV]:
    kv = [item for item in read_raw_kv(src) if item.key not in _DROPPED_KEYS]
    kv.append(encode_kv("general.quantization_version", GGML_QNT_VERSION))
    kv.append(encode_kv("general.file_type", file_type_id))
    return kv


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
    """Quantize the GGUF `src` to `dst` as file type `qtype` (a key of FILE_TYPES, e.g. "Q4_K_M").

    tensor_types: (regex, GGML type) pairs; the first pattern found in a tensor's name picks its
    type. progress(done, total, tensor) is called as weights are converted.
    """
    t0 = time.perf_counter()
    qtype = qtype.upper()
    if qtype not in FILE_TYPES:
        raise RequestError(
            f"unknown type {qtype!r}; choose one of {', '.join(FILE_TYPES)}", "qtype"
        )
    src_p, dst_p = Path(src), Path(dst)
    if src_p.is_dir() or src_p.suffix == ".safetensors":
        raise UnsupportedError(
            f"{src_p}: quantizing SafeTensors checkpoints is not supported yet; convert it to a "
            "GGUF first (llama.cpp's convert_hf_to_gguf.py --outtype f16)"
        )
    if src_p.resolve() == dst_p.resolve():
        raise RequestError(f"output {dst_p} is the input file", "dst")
    if not dst_p.parent.is_dir() or dst_p.is_dir():
        raise RequestError(f"cannot write {dst_p}: no such folder, or it is a folder", "dst")
    opts = MixOptions(pure, output_tensor_type, token_embedding_type, tuple(tensor_types))
    with _open(src_p) as ckpt:
        entries = [TensorEntry(i.name, i.shape, i.ggml_type) for i in ckpt.tensors.values()]
        types = plan_types(entries, qtype, ModelShape.from_metadata(ckpt.metadata), opts)
        _check_source(ckpt, types, allow_requantize)
        order = sorted(ckpt.tensors.values(), key=lambda i: layer_sort_key(i.name))
        specs = [TensorSpec(i.name, i.shape, types[i.name]) for i in order]
        total = sum(i.n_elements for i in order)
        with (
            atomic_output(dst_p) as tmp,
            open(tmp, "wb") as f,
            ThreadPoolExecutor(threads or default_threads()) as pool,
        ):
            kv = _output_kv(src_p, FILE_TYPES[qtype][0])
            with GGUFWriter(f, kv, specs, background=True) as w:
                done = 0
                for info in order:
                    done = _write_tensor(
                        w, ckpt, info, types[info.name], pool, done, total, progress
                    )
                digest = w.finish()
    if write_sha256_file:
        write_sha256(dst_p, digest)
    return QuantizeResult(
        path=dst_p, sha256=digest, file_type=qtype, src_nbytes=src_p.stat().st_size,
        dst_nbytes=dst_p.stat().st_size, n_weights=total,
        tensor_nbytes=sum(s.nbytes for s in specs), seconds=time.perf_counter() - t0,
        tensor_types={s.name: s.ggml_type for s in specs},
    )  # fmt: skip


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
