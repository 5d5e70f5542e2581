"""Engine: the KV cache kept across calls, and repeated requests answered the same."""

from __future__ import annotations

import pytest

from warmload.engine import load_engine, reusable_prefix


def test_reuse_stops_at_the_pass_that_computed_the_position():
    cached = list(range(10))  # a prompt chunk at 0, then decode steps at 6, 7, 8, 9
    starts = [0, 6, 7, 8, 9]
    assert reusable_prefix(cached, starts, cached + [42]) == 9  # extends the history
    assert reusable_prefix(cached, starts, cached[:8]) == 7  # the last prompt token is redone
    assert reusable_prefix(cached, starts, cached[:5] + [99]) == 0  # inside the first chunk
    assert reusable_prefix(cached, starts, [5, 6]) == 0
    assert reusable_prefix([], [], [1, 2, 3]) == 0


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return load_engine(smollm2_path, ctx=512)


def test_a_chat_turn_prefills_only_its_new_tokens(engine):
    engine.reset()
    messages = [{"role": "user", "content": "Name a colour."}]
    first = engine.chat(messages, max_tokens=8, temperature=0)
    messages += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And another one?"},
    ]
    second = engine.chat(messages, max_tokens=8, temperature=0)
    prompt = engine.chat_prompt(messages)
    assert second.timings.cached_tokens > len(engine.chat_prompt(messages[:1]))
    assert second.timings.prompt_tokens - second.timings.cached_tokens < len(prompt) // 2


def test_a_repeated_request_gets_the_same_answer(engine):
    """The second run reuses the cache (but recomputes the whole pass that held the last prompt
    token), the third starts from nothing: all three give the same tokens."""
    prompt = "List three colours of the rainbow:"
    engine.reset()
    fresh = engine.generate(prompt, max_tokens=24, temperature=0)
    again = engine.generate(prompt, max_tokens=24, temperature=0)
    engine.reset()
    after_reset = engine.generate(prompt, max_tokens=24, temperature=0)
    assert fresh.token_ids == again.token_ids == after_reset.token_ids
