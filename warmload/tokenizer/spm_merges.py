"""BPE merges for a SentencePiece vocab with scores, so `tokenizers.models.BPE` can run it.

llama.cpp's SPM tokenizer (`llm_tokenizer_spm_session`) repeatedly merges the adjacent pair whose
concatenation is a token with the highest score (ties: leftmost). That is BPE in which the pair
(left, right) has the rank of the merged token's score, which is how Hugging Face's
SentencePieceExtractor (transformers/convert_slow_tokenizer.py) builds the merges of its fast
Llama/Gemma tokenizers: every split of every token into two tokens, ordered by the merged
token's score (descending, ties by id), then by the ids of the two parts.

Enumerating the splits of 262k tokens one by one in Python takes seconds, so this hashes all
prefixes and suffixes with numpy (two independent 64-bit polynomial hashes, so a false match
needs both to collide) and keeps only splits whose two halves are tokens.
"""

from __future__ import annotations

import numpy as np

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


def _groups_by_length(tokens: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """length -> (token ids, (n, length) uint64 code points) for tokens of 2+ characters."""
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    groups = {}
    for length in np.unique(lengths[lengths >= 2]).tolist():
        ids = np.nonzero(lengths == length)[0]
        text = "".join(tokens[i] for i in ids.tolist())
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        groups[length] = (ids, codes.reshape(len(ids), length).astype(np.uint64))
    return groups


def _full_hashes(tokens: list[str], groups: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both hashes of every whole token, sorted by the first: (hash1, hash2, token id)."""
    n = len(tokens)
    h1 = np.zeros(n, dtype=np.uint64)
    h2 = np.zeros(n, dtype=np.uint64)
    for i, t in enumerate(tokens):  # 1-character tokens (grouped tokens are overwritten below)
        if len(t) == 1:
            h1[i] = h2[i] = np.uint64(ord(t) + 1)
    for ids, codes in groups.values():
        h1[ids] = _prefix_hashes(codes, _BASE_1)[:, -1]
        h2[ids] = _prefix_hashes(codes, _BASE_2)[:, -1]
    # duplicate texts: the last id wins, as in llama.cpp's token_to_id
    order = np.lexsort((-np.arange(n), h1))
    h1, h2, ids = h1[order], h2[order], order
    keep = np.ones(n, dtype=bool)
    keep[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    return h1[keep], h2[keep], ids[keep]


class _HashIndex:
    """Token id by (hash1, hash2) of its text: an open-addressing table probed with numpy."""

    def __init__(self, tokens: list[str], groups: dict) -> None:
        h1, h2, ids = _full_hashes(tokens, groups)
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


def spm_merges(tokens: list[str], scores: np.ndarray) -> list[tuple[str, str]]:
    """All (left, right) token pairs whose concatenation is a token, in merge-priority order."""
    groups = _groups_by_length(tokens)
    index = _HashIndex(tokens, groups)
    merged, lefts, rights = [], [], []
    for length, (ids, codes) in groups.items():
        p1, p2 = _prefix_hashes(codes, _BASE_1), _prefix_hashes(codes, _BASE_2)
        pow1, pow2 = _powers(length, _BASE_1), _powers(length, _BASE_2)
        for k in range(1, length):
            left = index.lookup(p1[:, k], p2[:, k])
            rows = np.nonzero(left >= 0)[0]  # look the right half up only where the left is a token
            with np.errstate(over="ignore"):
                right_1 = p1[rows, length] - p1[rows, k] * pow1[length - k]
                right_2 = p2[rows, length] - p2[rows, k] * pow2[length - k]
            right = index.lookup(right_1, right_2)
            ok = right >= 0
            merged.append(ids[rows[ok]])
            lefts.append(left[rows[ok]])
            rights.append(right[ok])
    if not merged:
        return []
    t, left, right = np.concatenate(merged), np.concatenate(lefts), np.concatenate(rights)
    order = np.lexsort((right, left, t, -scores[t].astype(np.float64)))
    return [(tokens[a], tokens[b]) for a, b in zip(left[order].tolist(), right[order].tolist())]
