"""Sampler chain: llama.cpp's rules, checked on hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from warmload.config import GenerationConfig
from warmload.errors import RequestError
from warmload.sampling import (
    apply_penalties,
    filter_candidates,
    greedy_token,
    make_generator,
    sample_token,
)


def test_greedy_is_argmax_and_ignores_seed():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    cfg = GenerationConfig(temperature=0.0)
    assert {sample_token(logits, [], cfg, make_generator(s)) for s in range(5)} == {1}


def test_greedy_token_is_torchs_argmax_ties_included():
    rows = torch.randn(6, 5000, generator=torch.Generator().manual_seed(0))
    rows[1, [7, 4000]] = rows[1].max() + 1.0  # a tie: the first wins, as torch.argmax
    rows[2, 123] = float("inf")
    for row in rows:
        assert greedy_token(row) == int(torch.argmax(row))
    assert greedy_token(rows[:, 3]) == int(torch.argmax(rows[:, 3]))  # a strided view
    assert greedy_token(rows[0].double()) == int(torch.argmax(rows[0]))


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    cfg = GenerationConfig(repeat_penalty=2.0)
    apply_penalties(logits, [0, 1, 1], cfg)
    assert logits.tolist() == [1.0, -4.0, 1.0, 0.5]


def test_frequency_and_presence_penalties_follow_openai():
    logits = torch.tensor([1.0, 1.0, 1.0])
    cfg = GenerationConfig(frequency_penalty=0.5, presence_penalty=0.25)
    apply_penalties(logits, [2, 2, 2, 0], cfg)
    assert logits.tolist() == pytest.approx([1.0 - 0.5 - 0.25, 1.0, 1.0 - 1.5 - 0.25])


def test_penalty_window_uses_only_recent_tokens():
    logits = torch.tensor([1.0, 1.0])
    cfg = GenerationConfig(temperature=0.0, repeat_penalty=10.0, repeat_last_n=1)
    # token 1 is in the window and penalised; token 0 is older than the window
    assert sample_token(logits, [1, 0], cfg) == 1
    assert sample_token(logits, [0, 1], cfg) == 0


def test_top_k_then_top_p_then_min_p():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = probs.log()
    values, ids = filter_candidates(logits, GenerationConfig(top_k=4, top_p=1.0, min_p=0.0))
    assert ids.tolist() == [0, 1, 2, 3]
    # top_p 0.8: 0.5+0.2 = 0.7 < 0.8 so the third token is needed, not the fourth
    _, ids = filter_candidates(logits, GenerationConfig(top_k=0, top_p=0.8, min_p=0.0))
    assert ids.tolist() == [0, 1, 2]
    # min_p 0.3: keep p >= 0.15
    _, ids = filter_candidates(logits, GenerationConfig(top_k=0, top_p=1.0, min_p=0.3))
    assert ids.tolist() == [0, 1, 2]
    assert math.isclose(values[0].item(), math.log(0.5), rel_tol=1e-6)


def test_seed_makes_sampling_reproducible_and_matches_the_distribution():
    logits = torch.tensor([0.7, 0.2, 0.1]).log()
    cfg = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    gen_a, gen_b = make_generator(1234), make_generator(1234)
    draws_a = [sample_token(logits, [], cfg, gen_a) for _ in range(3000)]
    draws_b = [sample_token(logits, [], cfg, gen_b) for _ in range(3000)]
    assert draws_a == draws_b
    freq = [draws_a.count(i) / len(draws_a) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    cold = GenerationConfig(temperature=0.05, top_k=0, top_p=1.0, min_p=0.0)
    gen = make_generator(0)
    assert {sample_token(logits, [], cold, gen) for _ in range(200)} == {0}


@pytest.mark.parametrize(
    "field,value",
    [("temperature", -1.0), ("top_p", 0.0), ("min_p", 1.5), ("max_tokens", -1), ("top_k", -2)],
)
def test_bad_options_name_the_parameter(field, value):
    with pytest.raises(RequestError) as err:
        GenerationConfig(**{field: value})
    assert err.value.param == field
