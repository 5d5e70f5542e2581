"""Per-row positions (batched decode) give the same logits as decoding each sequence alone."""

from __future__ import annotations

import pytest
import torch

from warmload.engine import load_engine


@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_per_row_decode_matches_single_sequences(name, request):
    model = load_engine(request.getfixturevalue(name)).model
    prompts = [list(range(100, 110)), list(range(200, 205)), list(range(300, 317))]
    with torch.inference_mode():
        cache = model.new_cache(64, 3)
        for row, prompt in enumerate(prompts):
            cache.clear(row, 0, 64)
            model(torch.tensor([prompt]), cache.rows(row, row + 1), 0)
        positions = torch.tensor([len(p) for p in prompts])
        batched = model.compute_logits(model(torch.tensor([[5], [6], [7]]), cache, positions))
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt + [5 + row]]), model.new_cache(64, 1), 0)
            ref = model.compute_logits(alone)[0, -1]
            assert torch.allclose(batched[row, 0], ref, atol=1e-3), row
            assert int(batched[row, 0].argmax()) == int(ref.argmax())
