"""Write .safetensors files (one, or shards with model.safetensors.index.json), atomically.

The layout of huggingface/safetensors (docs "Format"): an 8-byte little-endian header length,
the JSON header (padded with spaces to a multiple of 8 so the data starts aligned), then each
tensor's bytes in header order. Shards and the index are named as transformers'
save_pretrained names them: model-00001-of-00003.safetensors and a "weight_map" of tensor ->
shard. Each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from warmload.formats.safetensors import DTYPES, INDEX_NAME

# name -> (safetensors dtype, shape, raw bytes of exactly prod(shape) * itemsize)
TensorData = tuple[str, Sequence[int], Any]


def _nbytes(name: str, dtype: str, shape: Sequence[int], raw: Any) -> int:
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    n = 1
    for d in shape:
        n *= int(d)
    size = memoryview(raw).nbytes
    if size != n * DTYPES[dtype][1]:
        raise ValueError(f"tensor {name!r}: {size} bytes for {dtype} {list(shape)}")
    return size


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, TensorData],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write `tensors` (in mapping order) to `path`; returns the file's size in bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        nbytes = _nbytes(name, dtype, shape, raw)
        header[name] = {
            "dtype": dtype,
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, _, raw in tensors.values():
            f.write(memoryview(raw).cast("B"))
    tmp.replace(path)
    return 8 + len(head) + offset


def write_sharded(
    folder: str | os.PathLike[str],
    tensors: Mapping[str, TensorData],
    max_shard_bytes: int,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write `tensors` as shards of at most max_shard_bytes of data each (a bigger tensor gets
    a shard of its own) plus model.safetensors.index.json; returns the shard paths."""
    groups: list[dict[str, TensorData]] = [{}]
    size = 0
    for name, entry in tensors.items():
        nbytes = _nbytes(name, *entry)
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = entry
        size += nbytes
    folder = Path(folder)
    paths, weight_map = [], {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, group, metadata)
        paths.append(folder / name)
        weight_map.update(dict.fromkeys(group, name))
    total = sum(_nbytes(n, *e) for n, e in tensors.items())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=2), "utf-8")
    tmp.replace(folder / INDEX_NAME)
    return paths
