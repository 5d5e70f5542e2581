"""Fast reading of GGUF string arrays (a vocabulary of 262k tokens in a few milliseconds).

A GGUF string is a little-endian u64 byte length followed by the bytes (ggml/docs/gguf.md).
Walking 262k of them with struct costs ~0.1 s; here the records are found with numpy instead:

* A record of fewer than 256 bytes starts at a position p whose bytes p+1..p+7 are zero (the
  high bytes of its length). All such positions in a window are candidates; the true records
  are the chain 0 -> next(0) -> ..., where next(p) = p + 8 + length(p).
* Usually the candidates are exactly the chain (checked in one vectorised comparison). Where
  string bytes or zero runs add false candidates, the chain is found by pruning candidates that
  no surviving candidate points to, checked the same way, or by walking the successor list.
* The verified records are joined into one buffer with a zero byte before each string (the last
  byte of its length field), decoded once and split on "\\0" in C. Strings that contain a zero
  byte fall back to decoding one by one.

Records of 256 bytes or more, and everything near a bad length, go through the plain loop, so
the result is always exactly the sequential parse; a budget keeps odd data from costing more
than a few scans of the bytes it consumes.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

from warmload.errors import CheckpointError

_MIN_VECTOR = 64  # fewer strings than this: plain loop
_PLAIN_BATCH = 256  # strings read one by one after a scan that did not get far
_MAX_WINDOW = 1 << 20  # bytes scanned per numpy pass: bounded temporaries and waste
_U64 = struct.Struct("<Q")


def _plain(buf: mmap.mmap, pos: int, n: int, label: str, out: list[str]) -> int:
    """Read n strings one by one from pos; return the position after them."""
    size = len(buf)
    unpack = _U64.unpack_from
    for _ in range(n):
        if pos + 8 > size:
            raise CheckpointError(
                f"{label}: string {len(out)} of an array at byte {pos} needs 8 bytes of length "
                f"but the file ends at byte {size} (truncated file?)"
            )
        (length,) = unpack(buf, pos)
        pos += 8
        if length > size - pos:
            raise CheckpointError(
                f"{label}: string {len(out)} of an array at byte {pos - 8} claims {length} bytes "
                f"but only {size - pos} are left in the file (truncated or corrupt)"
            )
        out.append(str(buf[pos : pos + length], "utf-8", "surrogateescape"))
        pos += length
    return pos


def _chain(seg: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of up to `want` consecutive short records from seg[0], verified."""
    m = len(seg)
    empty = np.zeros(0, np.int64)
    if m < 8:
        return empty, empty
    z = seg == 0
    ok = z[1 : m - 6].copy()
    for j in range(2, 8):
        ok &= z[j : j + m - 7]
    cand = np.flatnonzero(ok)
    nxt = cand + 8 + seg[cand]
    fits = nxt <= m
    cand, nxt = cand[fits], nxt[fits]
    if len(cand) == 0 or cand[0] != 0:
        return empty, empty
    k = min(want, len(cand))
    if np.array_equal(nxt[: k - 1], cand[1:k]):  # the common case: no false candidates
        return cand[:k], nxt[:k] - cand[:k] - 8
    path = _chain_path(cand, nxt, want)
    return cand[path], nxt[path] - cand[path] - 8


def _chain_path(cand: np.ndarray, nxt: np.ndarray, want: int) -> np.ndarray:
    """Indices of the chain from candidate 0 (at most `want`) among false candidates."""
    M = len(cand)
    idx = np.minimum(np.searchsorted(cand, nxt), M - 1)
    succ = np.where(cand[idx] == nxt, idx, M)  # M: the chain leaves the candidates here
    alive = np.ones(M, dtype=bool)
    for _ in range(6):
        path = np.flatnonzero(alive)[:want]
        linked = np.array_equal(succ[path[:-1]], path[1:])
        if linked and (len(path) == want or succ[path[-1]] == M):
            return path
        # A false candidate's predecessors are all false: pruning those nobody alive points
        # to removes them in as many rounds as their chains are long; the true chain stays.
        pointed = np.zeros(M + 1, dtype=bool)
        pointed[succ[alive]] = True
        pointed[0] = True
        alive &= pointed[:M]
    succ_list = succ.tolist()
    walk = []
    i = 0
    while i != M and len(walk) < want:
        walk.append(i)
        i = succ_list[i]
    return np.array(walk, dtype=np.int64)


def _decode(seg: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out: list[str]) -> None:
    end = int(starts[-1] + 8 + lengths[-1])
    keep = np.ones(end, dtype=bool)
    for j in range(7):  # drop length bytes 0..6; byte 7 (always 0 here) separates the strings
        keep[starts + j] = False
    joined = seg[:end][keep].tobytes()
    if joined.count(0) == len(starts):  # no string holds a zero byte
        out += joined.decode("utf-8", "surrogateescape").split("\x00")[1:]
        return
    raw = seg[:end].tobytes()
    for s, n in zip(starts.tolist(), lengths.tolist()):
        out.append(raw[s + 8 : s + 8 + n].decode("utf-8", "surrogateescape"))


def read_string_array(
    buf: mmap.mmap, u8: np.ndarray, pos: int, n: int, label: str
) -> tuple[list[str], int]:
    """n GGUF strings from byte pos of buf (u8: the same bytes as uint8) -> (strings, end)."""
    out: list[str] = []
    size = len(buf)
    start, scanned = pos, 0
    while len(out) < n:
        left = n - len(out)
        consumed = pos - start
        if left < _MIN_VECTOR or scanned > 4 * consumed + (1 << 22):
            return out, _plain(buf, pos, left, label, out)
        done = len(out)
        avg = consumed / done if done else 16.0
        window = min(size - pos, int(avg * 1.1 * left) + 65536, _MAX_WINDOW)
        scanned += window
        starts, lengths = _chain(u8[pos : pos + window], left)
        if len(starts) < _MIN_VECTOR:  # a long string or odd bytes here: step past them
            pos = _plain(buf, pos, min(left, _PLAIN_BATCH), label, out)
            continue
        _decode(u8[pos : pos + window], starts, lengths, out)
        pos += int(starts[-1] + 8 + lengths[-1])
    return out, pos
