"""Write GGUF files: typed metadata, tensor infos, aligned tensor data, streamed in one pass.

Reference: the GGUF spec (ggml/docs/gguf.md) and llama.cpp's gguf.cpp writer: little-endian
header (magic, version 3, tensor count, KV count), the KV pairs, tensor infos (name, dims in
ggml order, type, offset relative to the data section), padding to `general.alignment` (32 by
default), then each tensor's bytes padded to the alignment.

Sizes are known before any data is written, so the header goes first and tensors stream after
it; `GGUFWriter` hashes every byte it writes (SHA-256) so the caller never re-reads the output.
Metadata is copied verbatim where types matter (llama.cpp rejects a u32 key stored as i32):
`read_raw_kv` returns a file's KV pairs as encoded bytes that `GGUFWriter` writes back as they
were. `atomic_output` gives a temporary path next to the target that is fsynced and renamed only
when everything succeeded, and removed on any failure (Ctrl-C and a full disk included).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from warmload.caches import atomic_output  # noqa: F401 - re-exported for writers
from warmload.errors import CheckpointError
from warmload.formats.ggml_types import GGML_TYPES

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf.md): id -> struct format of one scalar (None: string / array).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
_INTEGER_TYPES = frozenset({UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64})
_SCALAR_FORMATS = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<?",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}
_NUMPY_TYPES = {
    np.dtype(np.uint8): UINT8,
    np.dtype(np.int8): INT8,
    np.dtype(np.uint16): UINT16,
    np.dtype(np.int16): INT16,
    np.dtype(np.uint32): UINT32,
    np.dtype(np.int32): INT32,
    np.dtype(np.float32): FLOAT32,
    np.dtype(np.bool_): BOOL,
    np.dtype(np.uint64): UINT64,
    np.dtype(np.int64): INT64,
    np.dtype(np.float64): FLOAT64,
}


@dataclass(frozen=True, slots=True)
class RawKV:
    """One metadata pair as it is encoded in a GGUF file (key string, type, value)."""

    key: str
    vtype: int
    data: bytes  # the whole encoded entry, key included


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to write: name, PyTorch-order shape, GGML type name."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str

    @property
    def nbytes(self) -> int:
        t = GGML_TYPES[self.ggml_type]
        n = 1
        for d in self.shape:
            n *= d
        if self.shape and self.shape[-1] % t.block_size:
            raise CheckpointError(
                f"tensor {self.name!r}: rows of {self.shape[-1]} values are not a multiple of "
                f"the {self.ggml_type} block size {t.block_size}"
            )
        return t.nbytes(n)


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _infer_type(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        return BOOL
    if isinstance(value, np.generic):
        return _NUMPY_TYPES[value.dtype]
    if isinstance(value, int):
        return INT64 if value < -(2**31) or value >= 2**32 else (INT32 if value < 0 else UINT32)
    if isinstance(value, float):
        return FLOAT32
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return ARRAY
    raise CheckpointError(f"cannot store a {type(value).__name__} as GGUF metadata")


def _value(vtype: int, value: Any, item_type: int | None = None) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        items = list(value) if not isinstance(value, np.ndarray) else value
        if item_type is None:
            if isinstance(items, np.ndarray):
                item_type = _NUMPY_TYPES[items.dtype]
            else:
                item_type = _infer_type(items[0]) if len(items) else INT32
        head = struct.pack("<IQ", item_type, len(items))
        if item_type in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[item_type]
            return head + np.asarray(items, dtype=np.dtype(fmt)).tobytes()
        return head + b"".join(_value(item_type, v) for v in items)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def encode_kv(
    key: str, value: Any, vtype: int | None = None, item_type: int | None = None
) -> RawKV:
    """Encode one metadata pair; vtype (and item_type for arrays) default to inferred ones
    (ints: UINT32 when they fit, as gguf-py writes counts and ids; floats: FLOAT32)."""
    vt = _infer_type(value) if vtype is None else vtype
    return RawKV(key, vt, _string(key) + struct.pack("<I", vt) + _value(vt, value, item_type))


class _Cursor:
    """Bounds-checked little-endian reads from a buffer (errors name the file and offset)."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CheckpointError(
                f"{self.path}: metadata needs bytes {self.pos}..{end} but the file has "
                f"{len(self.buf)} (truncated?)"
            )
        out = bytes(self.buf[self.pos : end])
        self.pos = end
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def skip_value(self, vtype: int) -> None:
        if vtype in _SCALAR_FORMATS:
            self.pos += struct.calcsize(_SCALAR_FORMATS[vtype])
        elif vtype == STRING:
            n = self.unpack("<Q")  # read before adding: unpack moves pos
            self.pos += n
        elif vtype == ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type in _SCALAR_FORMATS:
                self.pos += count * struct.calcsize(_SCALAR_FORMATS[item_type])
            elif item_type == STRING:
                for _ in range(count):
                    n = self.unpack("<Q")
                    self.pos += n
            else:
                raise CheckpointError(f"{self.path}: unsupported array item type {item_type}")
        else:
            raise CheckpointError(f"{self.path}: unknown metadata value type {vtype}")
        if self.pos > len(self.buf):
            raise CheckpointError(f"{self.path}: metadata runs past the end of the file")


def read_raw_kv(path: str | os.PathLike[str]) -> list[RawKV]:
    """A GGUF file's metadata pairs, each as its encoded bytes (types kept exactly)."""
    p = Path(path)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, p)
        if cur.take(4) != GGUF_MAGIC:
            raise CheckpointError(f"{p}: not a GGUF file (bad magic)")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise CheckpointError(f"{p}: GGUF version {version} is not supported (2 or 3)")
        cur.unpack("<Q")  # tensor count
        n_kv = cur.unpack("<Q")
        out = []
        for _ in range(n_kv):
            start = cur.pos
            key = cur.take(cur.unpack("<Q")).decode("utf-8", "replace")
            vtype = cur.unpack("<I")
            cur.skip_value(vtype)
            out.append(RawKV(key, vtype, bytes(buf[start : cur.pos])))
        return out


def kv_value(item: RawKV) -> Any:
    """The value of a scalar or string pair; the first item of a numeric array (per-layer
    hyperparameters); None for other arrays."""
    cur = _Cursor(item.data, Path(item.key))
    cur.take(cur.unpack("<Q") + 4)  # key, type
    if item.vtype in _SCALAR_FORMATS:
        return cur.unpack(_SCALAR_FORMATS[item.vtype])
    if item.vtype == STRING:
        return cur.take(cur.unpack("<Q")).decode("utf-8", "replace")
    item_type, count = cur.unpack("<I"), cur.unpack("<Q")
    if item_type in _SCALAR_FORMATS and count:
        return [cur.unpack(_SCALAR_FORMATS[item_type])]
    return None


def _pad(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


def _alignment(kv: Sequence[RawKV]) -> int:
    """general.alignment as the reader takes it: any integer type (llama.cpp writes UINT32,
    other writers UINT64), a power of two; the writer lays out the data the same way."""
    alignment = DEFAULT_ALIGNMENT
    for item in kv:
        if item.key != "general.alignment":
            continue
        value = kv_value(item)
        if item.vtype not in _INTEGER_TYPES or value <= 0 or value & (value - 1):
            raise CheckpointError(
                f"GGUF writer: general.alignment must be a power-of-two integer, not {value!r}"
            )
        alignment = int(value)
    return alignment


class GGUFWriter:
    """Streams one GGUF file: header at construction, then `write_tensor` in spec order.

    kv: encoded pairs (RawKV from read_raw_kv or encode_kv); tensors: every tensor, in the
    order their data will be written. background=True writes and hashes on a thread (both
    release the GIL), overlapping them with the caller's work: buffers handed to write_tensor
    must then not change until finish(); an I/O error surfaces at the next call. Use it as a
    context manager (or call close()) so that thread always ends.
    """

    def __init__(
        self,
        f: BinaryIO,
        kv: Sequence[RawKV],
        tensors: Sequence[TensorSpec],
        *,
        background: bool = False,
    ) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=8)
            self._thread = threading.Thread(target=self._drain, name="gguf-writer", daemon=True)
            self._thread.start()
        self._alignment = _alignment(kv)
        self._specs = list(tensors)
        self._next = 0
        self.nbytes = 0
        header = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._specs), len(kv))]
        header += [item.data for item in kv]
        offset = 0
        for spec in self._specs:
            dims = tuple(reversed(spec.shape))  # ggml order: contiguous dimension first
            header.append(_string(spec.name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims))
            header.append(struct.pack("<IQ", GGML_TYPES[spec.ggml_type].id, offset))
            offset += spec.nbytes + _pad(spec.nbytes, self._alignment)
        blob = b"".join(header)
        self._emit(blob + bytes(_pad(len(blob), self._alignment)))

    def _emit(self, data: bytes | memoryview) -> None:
        self.nbytes += len(data)
        if self._queue is None:
            self._write(data)
            return
        self._raise_pending()
        self._queue.put(data)

    def _write(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self._hash.update(data)

    def _drain(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """End the background thread after the queued writes (idempotent)."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_tensor(self, name: str, data: bytes | memoryview | np.ndarray) -> None:
        """Write the next tensor's bytes (it must be the next spec, with its exact size)."""
        if self._next >= len(self._specs) or self._specs[self._next].name != name:
            expected = self._specs[self._next].name if self._next < len(self._specs) else None
            raise CheckpointError(f"GGUF writer: got tensor {name!r}, expected {expected!r}")
        spec = self._specs[self._next]
        buf = (
            memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
            if isinstance(data, np.ndarray)
            else memoryview(data).cast("B")
        )
        if len(buf) != spec.nbytes:
            raise CheckpointError(
                f"tensor {name!r} ({spec.ggml_type}, shape {list(spec.shape)}) needs "
                f"{spec.nbytes} bytes, got {len(buf)}"
            )
        self._emit(buf)
        self._emit(bytes(_pad(len(buf), self._alignment)))
        self._next += 1

    def finish(self) -> str:
        """Check that every tensor was written; return the file's SHA-256 (hex)."""
        if self._next != len(self._specs):
            missing = [s.name for s in self._specs[self._next :]]
            raise CheckpointError(
                f"GGUF writer: {len(missing)} tensor(s) not written: {missing[:5]}"
            )
        self.close()
        self._raise_pending()
        self._f.flush()
        return self._hash.hexdigest()


def write_gguf(
    path: str | os.PathLike[str],
    kv: Sequence[RawKV],
    tensors: Sequence[tuple[TensorSpec, bytes | memoryview | np.ndarray]],
) -> str:
    """Write a whole GGUF file atomically from in-memory tensors; return its SHA-256."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        w = GGUFWriter(f, kv, [spec for spec, _ in tensors])
        for spec, data in tensors:
            w.write_tensor(spec.name, data)
        return w.finish()
