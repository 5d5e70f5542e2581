"""The C attention kernel (kernels.attention: decode steps and prompt chunks) against torch:
rope, the cache write and causal (optionally sliding-window, optionally soft-capped) attention
with GQA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from warmload import kernels
from warmload.models.layers import RotaryTables, apply_rope, rope_angles, rope_inv_freq

pytestmark = pytest.mark.usefixtures("kernel_variant")  # every test on every variant

H, KV, MAX_CTX = 6, 2, 48


def reference(q, cache_k, cache_v, positions, window, scale, softcap=None):
    """Each query (n, H, D) at its position over its row's keys: torch's SDPA with a mask, or
    with `softcap` HF Gemma 2's eager attention (scores -> cap * tanh(scores / cap))."""
    if softcap is not None:
        return capped_reference(q, cache_k, cache_v, positions, window, scale, softcap)
    rows = []
    for i, pos in enumerate(positions):
        keys, values = cache_k[i, :, : pos + 1], cache_v[i, :, : pos + 1]  # (KV, L, D)
        visible = torch.arange(pos + 1)
        mask = visible > pos - window if window else torch.ones(pos + 1, dtype=torch.bool)
        out = F.scaled_dot_product_attention(
            q[i][:, None],
            keys,
            values,
            attn_mask=mask[None, None],
            scale=scale,
            enable_gqa=True,
        )  # (H, 1, D)
        rows.append(out[:, 0])
    return torch.stack(rows)


def capped_reference(q, cache_k, cache_v, positions, window, scale, cap):
    rows = []
    for i, pos in enumerate(positions):
        keys = cache_k[i, :, : pos + 1].repeat_interleave(H // KV, dim=0)  # (H, L, D)
        values = cache_v[i, :, : pos + 1].repeat_interleave(H // KV, dim=0)
        scores = torch.tanh((q[i][:, None] @ keys.transpose(-1, -2)) * scale / cap) * cap
        visible = torch.arange(pos + 1)
        if window:
            scores = scores.masked_fill(~(visible > pos - window), float("-inf"))
        rows.append((torch.softmax(scores, dim=-1) @ values)[:, 0])  # (H, D)
    return torch.stack(rows)


def rotated(x, tables, positions):
    """x (n, heads, D) rotated at each item's position (apply_rope's path)."""
    return torch.cat(
        [
            apply_rope(x[i][None, None], tables.window(p, 1))[0, 0][None]
            for i, p in enumerate(positions)
        ]
    )


@pytest.mark.parametrize("softcap", [None, 0.5])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("style,D", [("neox", 64), ("interleaved", 32), ("neox", 24)])
def test_chunk_attention_matches_torch(
    style: str, D: int, window: int | None, softcap: float | None
):
    g = torch.Generator().manual_seed(D)
    tables = RotaryTables(rope_inv_freq(D, 10000.0), style, torch.float32, torch.device("cpu"))
    tables.ensure(MAX_CTX)
    start, T = 9, 13
    cache_k = torch.randn(1, KV, MAX_CTX, D, generator=g)  # positions < start: an earlier chunk
    cache_v = torch.randn(1, KV, MAX_CTX, D, generator=g)
    q, k, v = (torch.randn(T, n, D, generator=g) for n in (H, KV, KV))
    want_k, want_v = cache_k.clone(), cache_v.clone()
    positions = list(range(start, start + T))
    want_k[0, :, start : start + T] = rotated(k, tables, positions).transpose(0, 1)
    want_v[0, :, start : start + T] = v.transpose(0, 1)
    want = reference(
        rotated(q, tables, positions),
        want_k.expand(T, -1, -1, -1),
        want_v.expand(T, -1, -1, -1),
        positions,
        window,
        0.3,
        softcap,
    )
    angles = rope_angles(tables.window(start, T))
    got = kernels.attention(
        q, k, v, cache_k, cache_v, start, window, 0.3, *angles, chunk=True, softcap=softcap
    )
    assert torch.allclose(cache_k, want_k, atol=1e-5) and torch.equal(cache_v, want_v)
    assert torch.allclose(got, want, atol=1e-5)
    if softcap is not None:  # the cap changes these scores: an ignored cap fails
        uncapped = kernels.attention(
            q, k, v, cache_k, cache_v, start, window, 0.3, *angles, chunk=True
        )
        assert not torch.allclose(got, uncapped, atol=1e-3)


@pytest.mark.parametrize("window", [None, 4])
def test_decode_attention_rows_at_their_own_positions(window: int | None):
    g = torch.Generator().manual_seed(1)
    D = 32
    tables = RotaryTables(
        rope_inv_freq(D, 500.0), "interleaved", torch.float32, torch.device("cpu")
    )
    tables.ensure(MAX_CTX)
    positions = torch.tensor([3, 17, 40])
    B = len(positions)
    cache_k, cache_v = (torch.randn(B, KV, MAX_CTX, D, generator=g) for _ in range(2))
    q, k, v = (torch.randn(B, n, D, generator=g) for n in (H, KV, KV))
    want_k, want_v = cache_k.clone(), cache_v.clone()
    rows = positions.tolist()
    for b, p in enumerate(rows):
        want_k[b, :, p] = rotated(k[b : b + 1], tables, [p])[0]
        want_v[b, :, p] = v[b]
    want = reference(rotated(q, tables, rows), want_k, want_v, rows, window, 0.25)
    got = kernels.attention(
        q,
        k,
        v,
        cache_k,
        cache_v,
        positions,
        window,
        0.25,
        *rope_angles(tables.window(positions, 1)),
    )
    assert torch.allclose(cache_k, want_k, atol=1e-5) and torch.equal(cache_v, want_v)
    assert torch.allclose(got, want, atol=1e-5)
    # a row's result does not depend on the others in its step
    alone = kernels.attention(
        q[1:2].clone(),
        k[1:2].clone(),
        v[1:2].clone(),
        cache_k[1:2].clone(),
        cache_v[1:2].clone(),
        positions[1:2],
        window,
        0.25,
        *rope_angles(tables.window(positions[1:2], 1)),
    )
    assert torch.equal(alone[0], got[1])
