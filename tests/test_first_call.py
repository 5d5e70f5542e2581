"""No first-call cost: load_engine primes the model (LoadConfig.prime) and leaves nothing of
it behind: the first answer is the very one an unprimed engine gives."""

from __future__ import annotations

from warmload.engine import load_engine


def test_priming_leaves_no_trace(smollm2_path):
    primed = load_engine(smollm2_path, ctx=256, prompt_cache="off")
    plain = load_engine(smollm2_path, ctx=256, prompt_cache="off", prime=False)
    try:
        assert primed.prime_seconds > 0 and plain.prime_seconds == 0
        assert primed._cache_ids == [] and primed._chunk_starts == []
        first = primed.generate("The capital of France is", max_tokens=6, temperature=0)
        assert first.timings.cached_tokens == 0
        ref = plain.generate("The capital of France is", max_tokens=6, temperature=0)
        assert first.token_ids == ref.token_ids
    finally:
        primed.close()
        plain.close()


def test_priming_fits_a_tiny_context(smollm2_path):
    engine = load_engine(smollm2_path, ctx=8, prompt_cache="off")  # passes that do not fit: none
    try:
        assert engine.generate([1, 2, 3], max_tokens=2, temperature=0).token_ids
    finally:
        engine.close()
