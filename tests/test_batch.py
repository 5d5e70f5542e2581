"""Per-row positions (batched decode) give the same logits as decoding each sequence alone."""

from __future__ import annotations

import pytest
import torch

from warmload.engine import load_engine


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_per_row_decode_matches_single_sequences(name, packed, request):
    """Float weights: equal to 1e-3 to decoding the sequence alone. Packed kernels quantize each
    token's activations to 8 bits, so the last-digit differences of attending over masked extra
    keys (and the lone decode's one-call plan, models/fused.py) flip roundings: a row then
    differs from its lone decode by about the 8-bit noise itself (measured: top-50
    log-probabilities within 0.42). A wrong position or cache row moves them by whole units and
    changes the argmax."""
    model = load_engine(request.getfixturevalue(name), packed=packed).model
    prompts = [list(range(100, 110)), list(range(200, 205)), list(range(300, 317))]
    with torch.inference_mode():
        cache = model.new_cache(64, 3)
        for row, prompt in enumerate(prompts):
            cache.clear(row, 0, 64)
            model(torch.tensor([prompt]), cache.rows(row, row + 1), 0)
        positions = torch.tensor([len(p) for p in prompts])
        batched = model.compute_logits(model(torch.tensor([[5], [6], [7]]), cache, positions))
        for row, prompt in enumerate(prompts):
            alone = model.new_cache(64, 1)
            model(torch.tensor([prompt]), alone, 0)  # as the engine decodes: prompt, then a step
            ref = model.compute_logits(model(torch.tensor([[5 + row]]), alone, len(prompt)))[0, -1]
            if packed:  # as log-probabilities: a uniform shift of all logits changes nothing
                got, want = batched[row, 0].log_softmax(-1), ref.log_softmax(-1)
                top = want.topk(50).indices
                assert (got[top] - want[top]).abs().max() <= 1.0, row
            else:
                assert torch.allclose(batched[row, 0], ref, atol=1e-3), row
            assert int(batched[row, 0].argmax()) == int(ref.argmax())
