"""Checks that a greedy continuation made under batching is right for its own sequence. Not a
test module.

A batched answer is not compared token for token with Engine.generate: a decode step gives a
batched row the same bits as a lone decode, but the runner prefills a prompt in other chunks
than Engine (PREFILL_CHUNK-sized while others decode), and float32 products over different row
counts may differ in the last digits, enough to flip a greedy near-tie (top-2 logit gaps of
0.01 are common). What must hold: every token is the top-1, up to that noise, of the model's
logits for *that* sequence computed alone the way generation computes them. A wrong KV row,
position or sampling state moves logits by whole units and fails this.
"""

from __future__ import annotations

TOLERANCE = 1.5  # logits: far above rounding noise, far below a wrong row or position


def assert_greedy_continuation(
    engine, prompt_ids: list[int], token_ids: list[int], tol: float = TOLERANCE
) -> None:
    ids = list(prompt_ids) + list(token_ids)
    # as generation computes them: the prompt in chunks, then one decode step per token
    logits = engine.logits(ids, decode_from=len(prompt_ids))[len(prompt_ids) - 1 :]
    for i, token in enumerate(token_ids):
        row = logits[i]
        gap = float(row.max() - row[token])
        assert gap <= tol, f"token {i} ({token}) is {gap:.2f} below the top-1 {int(row.argmax())}"
