"""SafeTensors reader: a .safetensors file, or a folder of shards -> Checkpoint.

Follows the format of huggingface/safetensors (docs "Format"): an 8-byte little-endian header
length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, optional
"__metadata__": {str: str}}, then the data; offsets are relative to the end of the header.
Sharded models list tensor -> shard file in model.safetensors.index.json ("weight_map"), as
transformers writes them. Only the headers are read here.

Checkpoint.metadata holds the files' "__metadata__" pairs, and what the model folder's side
files say (config.json under "config", the tokenizer files, the chat template: hf_folder.py).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.formats.hf_folder import inside_folder, parse_json, read_hf_folder
from warmload.formats.source import open_source

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library

# safetensors dtype -> (GGML_TYPES name, bytes per element).
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("F64", 8),
    "F32": ("F32", 4),
    "F16": ("F16", 2),
    "BF16": ("BF16", 2),
    "I64": ("I64", 8),
    "I32": ("I32", 4),
    "I16": ("I16", 2),
    "I8": ("I8", 1),
    "U8": ("U8", 1),
    "BOOL": ("BOOL", 1),
}


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header JSON, data start, file size) of one .safetensors file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(
                f"{path}: {size} bytes is too short for a SafeTensors file (8-byte header length)"
            )
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: header length {n} is impossible for a file of {size} bytes "
                f"(limit {MAX_HEADER_BYTES}; truncated or not SafeTensors?)"
            )
        raw = f.read(n)
    header = parse_json(raw, f"{path}: the header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is JSON {type(header).__name__}, not an object")
    return header, 8 + n, size


def _tensor(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}; want a string")
    if dtype not in DTYPES:
        raise UnsupportedError(
            f"{path}: tensor {name!r} has dtype {dtype!r}; supported: {', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r}; want ints >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r}; want [begin, end], "
            f"0 <= begin <= end"
        )
    type_name, itemsize = DTYPES[dtype]
    n = 1
    for d in shape:
        n *= d
    nbytes = n * itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {nbytes} bytes but its "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )
    return TensorInfo(name, type_name, tuple(shape), data_start + offsets[0], nbytes, str(path))


def _check_layout(path: Path, size: int, tensors: list[TensorInfo]) -> None:
    prev: TensorInfo | None = None
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if t.offset + t.nbytes > size:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} ends at byte {t.offset + t.nbytes} but the file has "
                f"{size} bytes (truncated download?)"
            )
        if prev is not None and t.nbytes and t.offset < prev.offset + prev.nbytes:
            raise CheckpointError(
                f"{path}: tensor {prev.name!r} (bytes {prev.offset}..{prev.offset + prev.nbytes})"
                f" overlaps tensor {t.name!r} (from byte {t.offset})"
            )
        if t.nbytes:
            prev = t


def read_safetensors_file(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors and "__metadata__" of one .safetensors file, validated."""
    header, data_start, size = _read_header(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: __metadata__ must be a JSON object, not {meta!r}")
    tensors = [_tensor(path, name, entry, data_start) for name, entry in header.items()]
    _check_layout(path, size, tensors)
    return {t.name: t for t in tensors}, meta


def _weight_map(index: Path) -> dict[str, str]:
    """The index's weight_map (tensor name -> shard file name), every value checked."""
    try:
        text = index.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{index}: cannot read it ({e.strerror or e})") from None
    data = parse_json(text, index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: want a JSON object with a weight_map object")
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise CheckpointError(
            f"{index}: weight_map must map tensor names to shard file names, but "
            f"{bad[0][0]!r} maps to {bad[0][1]!r}"
        )
    return weight_map


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if not index.is_file():
        files = sorted(folder.glob("*.safetensors"))
        return [inside_folder(folder, f.name, "a shard") for f in files]
    index = inside_folder(folder, INDEX_NAME, INDEX_NAME)
    shards = sorted(set(_weight_map(index).values()))
    paths = [inside_folder(folder, s, f"{INDEX_NAME}'s weight_map") for s in shards]
    missing = [s for s, p in zip(shards, paths) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{index}: names {len(missing)} shard file(s) that are not in {folder}: "
            f"{', '.join(missing[:5])}"
        )
    return paths


def read_safetensors(path: str | os.PathLike[str], load_mode: str = "mmap") -> Checkpoint:
    """Open a .safetensors file or a folder of shards: headers only, validated."""
    p = Path(path)
    files = _shard_files(p) if p.is_dir() else [p]
    if not files:
        raise CheckpointError(f"{p}: no .safetensors files and no {INDEX_NAME} in this folder")
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, Any] = {}
    for file in files:
        found, meta = read_safetensors_file(file)
        for name, info in found.items():
            if name in tensors:
                raise CheckpointError(
                    f"{p}: tensor {name!r} is in both {Path(tensors[name].file).name} and "
                    f"{file.name}"
                )
            tensors[name] = info
        metadata.update(meta)
    _check_weight_map(p, tensors)
    metadata.update(read_hf_folder(p if p.is_dir() else p.parent))
    return Checkpoint(p, "safetensors", metadata, tensors, open_source(load_mode))


def _check_weight_map(folder: Path, tensors: dict[str, TensorInfo]) -> None:
    index = folder / INDEX_NAME
    if not index.is_file():
        return
    for name, shard in _weight_map(index).items():
        info = tensors.get(name)
        if info is None or Path(info.file).name != Path(shard).name:
            where = "no shard" if info is None else Path(info.file).name
            raise CheckpointError(
                f"{index}: weight_map puts tensor {name!r} in {shard} but it is in {where}"
            )
