"""Per-row positions (batched decode) give the same logits as decoding each sequence alone."""

from __future__ import annotations

import pytest
import torch

from warmload.engine import load_engine


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_per_row_decode_matches_single_sequences(name, packed, request):
    """Float weights: equal to 1e-3 to decoding the sequence alone. Packed weights: equal bit
    for bit, since a decode step's products quantize and dot each row on its own and the C
    attention reads only the row's own keys."""
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
            if packed:  # per-row products and the C attention: the very same arithmetic
                assert torch.equal(batched[row, 0], ref), row
            else:
                assert torch.allclose(batched[row, 0], ref, atol=1e-3), row
            assert int(batched[row, 0].argmax()) == int(ref.argmax())
