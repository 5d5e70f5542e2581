"""BPE merges for a SentencePiece vocab with scores, so `tokenizers.models.BPE` can run it.

llama.cpp's SPM tokenizer (`llm_tokenizer_spm_session`) repeatedly merges the adjacent pair whose
concatenation is a token with the highest score (ties: leftmost). That is BPE in which the pair
(left, right) has the rank of the merged token's score, which is how Hugging Face's
SentencePieceExtractor (transformers/convert_slow_tokenizer.py) builds the merges of its fast
Llama/Gemma tokenizers: every split of every token into two tokens, ordered by the merged
token's score (descending, ties by id), then by the ids of the two parts.

Enumerating the splits of 262k tokens one by one in Python takes seconds, so this hashes all
prefixes and suffixes with numpy (two independent 64-bit polynomial hashes, so a false match
needs both to collide) and keeps only splits whose two halves are tokens. The result can be
kept on disk, keyed by a hash of the tokens and scores, in a checked cache entry
(warmload.caches: a header naming the vocab and the payload's SHA-256, written atomically under
a lock); a damaged entry is discarded and recomputed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from warmload.caches import discard_bad, entry_lock, read_checked, write_checked

_CACHE_VERSION = 2  # bump when the merge order or the file layout changes

_BASE_1 = np.uint64(0x9E3779B97F4A7C15)
_BASE_2 = np.uint64(0xC2B2AE3D27D4EB4F)


def _prefix_hashes(codes: np.ndarray, base: np.uint64) -> np.ndarray:
    """(n, L) code points -> (n, L + 1) hashes of the first k characters, k = 0..L."""
    n, length = codes.shape
    out = np.zeros((n, length + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(length):
            out[:, k + 1] = out[:, k] * base + codes[:, k] + np.uint64(1)
    return out


def _powers(length: int, base: np.uint64) -> np.ndarray:
    out = np.ones(length + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(length):
            out[k + 1] = out[k] * base
    return out


class _Group:
    """Tokens of one length: their ids and the prefix hashes of their texts (both bases)."""

    def __init__(self, tokens: list[str], ids: np.ndarray, length: int) -> None:
        text = "".join(map(tokens.__getitem__, ids.tolist()))
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        codes = codes.reshape(len(ids), length).astype(np.uint64)
        self.ids, self.length = ids, length
        self.p1, self.p2 = _prefix_hashes(codes, _BASE_1), _prefix_hashes(codes, _BASE_2)


def _groups_by_length(tokens: list[str]) -> list[_Group]:
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    order = np.argsort(lengths, kind="stable")
    bounds = np.searchsorted(lengths[order], np.unique(lengths), side="right")
    groups, start = [], 0
    for stop in bounds.tolist():
        ids = order[start:stop]
        groups.append(_Group(tokens, ids, int(lengths[ids[0]])))
        start = stop
    return groups


def _full_hashes(n: int, groups: list[_Group]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both hashes of every whole token, sorted by the first: (hash1, hash2, token id)."""
    h1 = np.zeros(n, dtype=np.uint64)
    h2 = np.zeros(n, dtype=np.uint64)
    for g in groups:
        h1[g.ids], h2[g.ids] = g.p1[:, -1], g.p2[:, -1]
    # duplicate texts: the last id wins, as in llama.cpp's token_to_id
    order = np.lexsort((-np.arange(n), h1))
    h1, h2 = h1[order], h2[order]
    keep = np.ones(n, dtype=bool)
    keep[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    return h1[keep], h2[keep], order[keep]


class _HashIndex:
    """Token id by (hash1, hash2) of its text: an open-addressing table probed with numpy."""

    def __init__(self, n: int, groups: list[_Group]) -> None:
        h1, h2, ids = _full_hashes(n, groups)
        bits = max(4, int(len(h1) * 4 - 1).bit_length())  # load factor <= 1/4
        self.shift = np.uint64(64 - bits)
        self.mask = (1 << bits) - 1
        self.slot_of = np.full(1 << bits, -1, dtype=np.int64)  # slot -> row of (h1, h2, ids)
        pending = np.arange(len(h1))
        slots = self._slots(h1)
        while len(pending):
            free = self.slot_of[slots] < 0
            winners, first = np.unique(slots[free], return_index=True)
            self.slot_of[winners] = pending[free][first]
            placed = np.zeros(len(pending), dtype=bool)
            placed[np.nonzero(free)[0][first]] = True
            pending, slots = pending[~placed], (slots[~placed] + 1) & self.mask
        self.h1, self.h2, self.ids = h1, h2, ids

    def _slots(self, h: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # splitmix64's finalizer spreads short strings' hashes
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (h >> self.shift).astype(np.int64)

    def lookup(self, key1: np.ndarray, key2: np.ndarray) -> np.ndarray:
        """Token id of each (key1, key2) pair, or -1."""
        out = np.full(len(key1), -1, dtype=np.int64)
        todo = np.arange(len(key1))
        slots = self._slots(key1)
        while len(todo):
            row = self.slot_of[slots]
            empty = row < 0
            match = ~empty & (self.h1[row] == key1[todo])
            hit = match & (self.h2[row] == key2[todo])
            out[todo[hit]] = self.ids[row[hit]]
            more = ~empty & ~match
            todo, slots = todo[more], (slots[more] + 1) & self.mask
        return out


def merge_ids(tokens: list[str], scores: np.ndarray) -> np.ndarray:
    """(m, 2) int32 ids of all (left, right) token pairs whose concatenation is a token, in
    merge-priority order."""
    n = len(tokens)
    assert n < 1 << 21, "ids must fit the 63-bit sort key"
    groups = _groups_by_length(tokens)
    index = _HashIndex(n, groups)
    merged, lefts, rights = [], [], []
    for g in groups:
        p1, p2, length = g.p1, g.p2, g.length
        pow1, pow2 = _powers(length, _BASE_1), _powers(length, _BASE_2)
        for k in range(1, length):
            left = index.lookup(p1[:, k], p2[:, k])
            rows = np.nonzero(left >= 0)[0]  # look the right half up only where the left is a token
            with np.errstate(over="ignore"):
                right_1 = p1[rows, length] - p1[rows, k] * pow1[length - k]
                right_2 = p2[rows, length] - p2[rows, k] * pow2[length - k]
            right = index.lookup(right_1, right_2)
            ok = right >= 0
            merged.append(g.ids[rows[ok]])
            lefts.append(left[rows[ok]])
            rights.append(right[ok])
    if not merged:
        return np.zeros((0, 2), dtype=np.int32)
    t, left, right = np.concatenate(merged), np.concatenate(lefts), np.concatenate(rights)
    # order: merged token's score descending (ties: lower id first), then left id, then right id
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -scores.astype(np.float64)))] = np.arange(n)
    order = np.argsort((rank[t] << 42) | (left << 21) | right)
    return np.stack([left[order], right[order]], axis=1).astype(np.int32)


def spm_merges(
    tokens: list[str], scores: np.ndarray, cache_folder: Path | None = None
) -> list[tuple[str, str]]:
    """merge_ids() as (left, right) strings for tokenizers' BPE; with `cache_folder`, the ids
    are kept there under a hash of the vocab (Gemma's 262k tokens: 515k merges, ~0.5 s)."""
    pairs = _cached_merge_ids(tokens, scores, cache_folder) if cache_folder else None
    if pairs is None:
        pairs = merge_ids(tokens, scores)
    get = tokens.__getitem__
    return list(zip(map(get, pairs[:, 0].tolist()), map(get, pairs[:, 1].tolist())))


def _source(tokens: list[str], scores: np.ndarray) -> dict[str, object]:
    """The identity of a vocab: what a cached merge list must have been derived from."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\x00".join(tokens).encode("utf-8", "surrogatepass"))
    digest.update(np.ascontiguousarray(scores, dtype=np.float32).tobytes())
    return {
        "kind": "spm-merges",
        "version": _CACHE_VERSION,
        "vocab_blake2b": digest.hexdigest(),
        "n_tokens": len(tokens),
    }


def _cached_merge_ids(tokens: list[str], scores: np.ndarray, folder: Path) -> np.ndarray | None:
    """merge_ids() through the cache: read a checked entry, or compute and store one under the
    entry's lock (a concurrent process waits, then reads it). None: the cache is unusable."""
    source = _source(tokens, scores)
    path = folder / f"spm-merges-v{_CACHE_VERSION}-{source['vocab_blake2b']}.bin"
    with entry_lock(path) as locked:
        if not locked:
            return None
        pairs = _decode(path, read_checked(path, source), len(tokens))
        if pairs is None:
            pairs = merge_ids(tokens, scores)
            write_checked(path, source, pairs.astype("<i4").tobytes())
    return pairs


def _decode(path: Path, payload: bytes | None, n_tokens: int) -> np.ndarray | None:
    if payload is None:
        return None
    if len(payload) % 8:
        discard_bad(path, f"{len(payload)} bytes is not a whole number of id pairs")
        return None
    pairs = np.frombuffer(payload, dtype="<i4").reshape(-1, 2).astype(np.int32)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n_tokens):
        discard_bad(path, f"ids outside the vocabulary of {n_tokens} tokens")
        return None
    return pairs
