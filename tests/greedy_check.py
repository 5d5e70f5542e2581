"""Checks that a greedy continuation made under batching is right for its own sequence. Not a
test module.

Batched rows cannot be compared token for token with a lone decode: the packed kernels quantize
each row's activations to 8 bits, and a row that attends over the batch's masked extra keys
rounds differently, so near-ties (top-2 logit gaps of 0.01 are common) flip and texts drift
apart (tests/test_batch.py::test_per_row_decode_matches_single_sequences measures the noise:
top-50 logits within 0.8). What must hold: every token is the top-1, up to that noise, of the
model's logits for *that* sequence, computed alone the way generation computes them. A wrong
KV row, position or sampling state moves logits by whole units and fails this.
"""

from __future__ import annotations

TOLERANCE = 1.5  # logits; the per-row bound test_batch asserts for packed weights


def assert_greedy_continuation(
    engine, prompt_ids: list[int], token_ids: list[int], tol: float = TOLERANCE
) -> None:
    ids = list(prompt_ids) + list(token_ids)
    logits = engine.logits(ids, decode_from=len(prompt_ids))[len(prompt_ids) - 1 :]
    for i, token in enumerate(token_ids):
        row = logits[i]
        gap = float(row.max() - row[token])
        assert gap <= tol, f"token {i} ({token}) is {gap:.2f} below the top-1 {int(row.argmax())}"
