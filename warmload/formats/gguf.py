"""GGUF reader: the header (metadata and tensor infos) of a .gguf file -> Checkpoint.

Follows the GGUF spec (ggml/docs/gguf.md) and the checks of llama.cpp's ggml/src/gguf.cpp.
The header is parsed on a read-only mmap with struct and numpy, whatever the load mode; tensor
bytes are not touched. Big string arrays (a 262k-token vocabulary) are split with numpy
(gguf_strings.py); gguf-py's GGUFReader takes seconds on them.

Metadata values: scalars -> int/float/bool/str; array of strings -> list[str]; array of numbers
or bools -> 1-D numpy array of the matching dtype (a copy: the header mmap is closed after the
parse); array of arrays -> list of those. Strings that are not UTF-8 keep their bytes as lone
surrogates (errors="surrogateescape"). Every count and length is checked against the bytes
that are left before anything is allocated from it.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint, TensorInfo
from warmload.formats.ggml_types import GGML_TYPES_BY_ID
from warmload.formats.gguf_strings import read_string_array
from warmload.formats.source import open_source

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # nested arrays deeper than this are refused (no recursion bombs)

# GGUF value type id -> (name, numpy dtype for scalars and numeric arrays; None: string/array).
VALUE_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    0: ("UINT8", np.dtype("<u1")),
    1: ("INT8", np.dtype("<i1")),
    2: ("UINT16", np.dtype("<u2")),
    3: ("INT16", np.dtype("<i2")),
    4: ("UINT32", np.dtype("<u4")),
    5: ("INT32", np.dtype("<i4")),
    6: ("FLOAT32", np.dtype("<f4")),
    7: ("BOOL", np.dtype("<u1")),
    8: ("STRING", None),
    9: ("ARRAY", None),
    10: ("UINT64", np.dtype("<u8")),
    11: ("INT64", np.dtype("<i8")),
    12: ("FLOAT64", np.dtype("<f8")),
}
STRING, ARRAY, BOOL = 8, 9, 7
_SCALAR_STRUCTS = {  # explicit standard sizes: numpy's dtype chars ("L") are platform-sized
    t: struct.Struct("<" + f) for t, f in zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIifBQqd")
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


class _Header:
    """Bounds-checked little-endian reads over the header mmap; errors name the file."""

    __slots__ = ("buf", "u8", "size", "pos", "label")

    def __init__(self, buf: mmap.mmap, label: str) -> None:
        self.buf = buf
        self.u8 = np.frombuffer(buf, dtype=np.uint8)
        self.size = len(buf)
        self.pos = 0
        self.label = label

    def fail(self, message: str) -> NoReturn:
        raise CheckpointError(f"{self.label}: {message}")

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.size - self.pos:
            self.fail(
                f"{what} at byte {self.pos} needs {nbytes} bytes but the file ends at byte "
                f"{self.size} (truncated file?)"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        s = str(self.buf[self.pos : self.pos + n], "utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype == STRING:
            return self.string(f"string value of {key!r}")
        if vtype == ARRAY:
            return self.array(key, depth)
        if vtype not in _SCALAR_STRUCTS:
            self.fail(
                f"metadata key {key!r} has unknown value type {vtype} at byte {self.pos - 4} "
                f"(known: 0..12)"
            )
        st = _SCALAR_STRUCTS[vtype]
        self.need(st.size, f"value of {key!r}")
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return bool(v) if vtype == BOOL else v

    def array(self, key: str, depth: int) -> Any:
        if depth >= MAX_ARRAY_DEPTH:
            self.fail(f"metadata key {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        at = self.pos
        item_type = self.u32(f"item type of array {key!r}")
        n = self.u64(f"length of array {key!r}")
        left = self.size - self.pos
        if item_type in (STRING, ARRAY):
            min_item = 8 if item_type == STRING else 12
            if n > left // min_item:
                self.fail(
                    f"array {key!r} at byte {at} claims {n} items but only {left} bytes are "
                    f"left in the file (each needs at least {min_item}; truncated file?)"
                )
            if item_type == STRING:
                items, self.pos = read_string_array(self.buf, self.u8, self.pos, n, self.label)
                return items
            return [self._nested(key, depth) for _ in range(n)]
        if item_type not in VALUE_TYPES:
            self.fail(
                f"array {key!r} at byte {at} has unknown item type {item_type} (known: 0..12)"
            )
        dtype = VALUE_TYPES[item_type][1]
        assert dtype is not None
        if n > left // dtype.itemsize:
            self.fail(
                f"array {key!r} at byte {at} claims {n} items of {dtype.itemsize} bytes but only "
                f"{left} bytes are left in the file (truncated file?)"
            )
        out = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
        self.pos += n * dtype.itemsize
        if item_type == BOOL:
            return out != 0
        return out.astype(dtype.newbyteorder("="))  # a native-order copy, free of the mmap

    def _nested(self, key: str, depth: int) -> Any:
        return self.array(key, depth + 1)


def _read_metadata(h: _Header, n_kv: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        at = h.pos
        key = h.string(f"key of metadata pair {i}")
        vtype = h.u32(f"value type of {key!r}")
        if key in metadata:
            h.fail(f"metadata key {key!r} appears twice (second time at byte {at})")
        metadata[key] = h.value(vtype, key)
    return metadata


def _alignment(h: _Header, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        h.fail(f"general.alignment must be an integer, not {alignment!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        h.fail(f"general.alignment is {alignment}; it must be a power of two")
    return alignment


def _read_tensor_info(h: _Header, alignment: int) -> tuple[str, str, tuple[int, ...], int, int]:
    at = h.pos
    name = h.string("tensor name")
    n_dims = h.u32(f"n_dims of tensor {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        h.fail(f"tensor {name!r} (info at byte {at}) has {n_dims} dimensions, not 1..{MAX_DIMS}")
    h.need(8 * n_dims, f"dimensions of tensor {name!r}")
    ne = struct.unpack_from(f"<{n_dims}q", h.buf, h.pos)
    h.pos += 8 * n_dims
    if any(d <= 0 for d in ne):
        h.fail(f"tensor {name!r} has dimensions {list(ne)} (ggml order); all must be positive")
    type_id = h.u32(f"type of tensor {name!r}")
    offset = h.u64(f"data offset of tensor {name!r}")
    gt = GGML_TYPES_BY_ID.get(type_id)
    if gt is None:
        known = ", ".join(f"{t.id} {t.name}" for t in GGML_TYPES_BY_ID.values() if t.id >= 0)
        raise UnsupportedError(
            f"{h.label}: tensor {name!r} has ggml type id {type_id}, which warmload does not "
            f"know (known: {known})"
        )
    if ne[0] % gt.block_size:
        h.fail(
            f"tensor {name!r} ({gt.name}) has rows of {ne[0]} elements, not a multiple of the "
            f"{gt.name} block size {gt.block_size}"
        )
    n_elements = 1
    for d in ne:
        n_elements *= d
    nbytes = gt.nbytes(n_elements)
    if nbytes > h.size:
        h.fail(
            f"tensor {name!r} ({gt.name}, shape {list(reversed(ne))}) needs {nbytes} bytes but "
            f"the whole file has {h.size} bytes (truncated download?)"
        )
    if offset % alignment:
        h.fail(
            f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}"
        )
    return name, gt.name, tuple(reversed(ne)), offset, nbytes


def _check_layout(label: str, size: int, tensors: dict[str, TensorInfo]) -> None:
    """Each tensor inside the file, none overlapping its neighbour."""
    prev: TensorInfo | None = None
    for t in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        end = t.offset + t.nbytes
        if end > size:
            raise CheckpointError(
                f"{label}: tensor {t.name!r} ({t.ggml_type}, shape {list(t.shape)}, {t.nbytes} "
                f"bytes) ends at byte {end} but the file has {size} bytes (truncated download?)"
            )
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise CheckpointError(
                f"{label}: tensor {prev.name!r} ({prev.ggml_type}, shape {list(prev.shape)}) "
                f"occupies bytes {prev.offset}..{prev.offset + prev.nbytes} and overlaps tensor "
                f"{t.name!r} which starts at byte {t.offset}"
            )
        prev = t


def _parse(h: _Header) -> tuple[int, dict[str, Any], dict[str, TensorInfo], int, int]:
    h.need(4, "magic")
    magic = bytes(h.buf[0:4])
    h.pos = 4
    if magic != GGUF_MAGIC:
        h.fail(f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    version = h.u32("version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (1, 2, 3):
            h.fail(f"big-endian GGUF (version {swapped}) is not supported; use a little-endian one")
        if version == 1:
            h.fail("GGUF version 1 is not supported (2 and 3 are); re-convert the model")
        h.fail(f"unsupported GGUF version {version} (2 and 3 are supported)")
    n_tensors = h.u64("tensor count")
    n_kv = h.u64("metadata count")
    left = h.size - h.pos
    if n_kv > left // _MIN_KV_BYTES or n_tensors > left // _MIN_TENSOR_BYTES:
        h.fail(
            f"header claims {n_tensors} tensors and {n_kv} metadata pairs but only {left} bytes "
            f"follow (truncated or corrupt header)"
        )
    metadata = _read_metadata(h, n_kv)
    alignment = _alignment(h, metadata)
    infos = [_read_tensor_info(h, alignment) for _ in range(n_tensors)]
    data_offset = -(-h.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    path = str(h.label)
    for name, type_name, shape, offset, nbytes in infos:
        if name in tensors:
            h.fail(f"tensor {name!r} appears twice in the tensor infos")
        tensors[name] = TensorInfo(name, type_name, shape, data_offset + offset, nbytes, path)
    if tensors and data_offset > h.size:
        h.fail(
            f"tensor data should start at byte {data_offset} but the file ends at byte {h.size} "
            f"(truncated file?)"
        )
    _check_layout(h.label, h.size, tensors)
    return version, metadata, tensors, data_offset, alignment


def read_gguf_header(path: str | os.PathLike[str]) -> Checkpoint:
    """Parse a GGUF header into a Checkpoint without a byte source (source=None)."""
    p = Path(path)
    label = str(p)
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{label}: is a directory, not a GGUF file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{label}: the file is empty (0 bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    h = _Header(buf, label)
    try:
        version, metadata, tensors, data_offset, alignment = _parse(h)
    finally:
        h.u8 = None
        del h
        try:
            buf.close()
        except BufferError:  # a view escaped; the mapping goes away with it
            pass
    return Checkpoint(p, "gguf", metadata, tensors, None, version, data_offset, alignment)


def read_gguf(path: str | os.PathLike[str], load_mode: str = "mmap") -> Checkpoint:
    """Open a GGUF file: parse and validate its header; tensor bytes come from `load_mode`."""
    checkpoint = read_gguf_header(path)
    checkpoint.source = open_source(load_mode)
    return checkpoint
