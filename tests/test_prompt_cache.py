"""The prompt cache on disk: entries restored bit-equal in a new engine, corrupt or stale
entries ignored with one warning, writes atomic, the folder bounded (LRU)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from warmload.config import LoadConfig
from warmload.errors import RequestError
from warmload.prompt_cache import MIN_PREFIX_TOKENS, SUFFIX, PromptCache, memory_adapter


class ArrayMemory:
    """A SequenceMemory that is not a KV cache (as a recurrent state would be)."""

    def __init__(self, size: int = 1000) -> None:
        self.state = np.zeros((size, 4), dtype=np.float32)

    def snapshot(self, n_tokens: int) -> list[np.ndarray]:
        return [self.state[:n_tokens].copy()]

    def restore(self, arrays: list[np.ndarray], n_tokens: int) -> None:
        self.state[:n_tokens] = arrays[0]

    def layout(self) -> str:
        return "array:4:float32"


IDS = list(range(100, 100 + 2 * MIN_PREFIX_TOKENS))


def saved(tmp_path, identity="model-a", ids=IDS, max_bytes=1 << 30):
    cache = PromptCache(tmp_path, identity, max_bytes)
    memory = ArrayMemory()
    memory.state[: len(ids)] = np.arange(len(ids) * 4, dtype=np.float32).reshape(-1, 4)
    path = cache.save(ids, memory, starts=[0, 7])
    assert path is not None and path.exists()
    return cache, memory, path


def test_an_entry_is_restored_with_its_pass_starts(tmp_path):
    _, memory, _ = saved(tmp_path)
    other = PromptCache(tmp_path, "model-a", 1 << 30)  # another process, same identity
    fresh = ArrayMemory()
    n, starts = other.lookup(IDS + [1, 2, 3], fresh)
    assert n == len(IDS) and starts == [0, 7]
    assert np.array_equal(fresh.state, memory.state)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_the_longest_saved_prefix_wins_and_longer_than_is_respected(tmp_path):
    cache, _, _ = saved(tmp_path)
    cache.save(IDS[:MIN_PREFIX_TOKENS], ArrayMemory())
    assert cache.lookup(IDS, ArrayMemory())[0] == len(IDS)
    assert cache.lookup(IDS[:-1], ArrayMemory())[0] == MIN_PREFIX_TOKENS
    assert cache.lookup(IDS, ArrayMemory(), longer_than=len(IDS))[0] == 0
    assert cache.lookup([7] + IDS[1:], ArrayMemory())[0] == 0  # other tokens


def corrupt_truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


def corrupt_flip(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10
    path.write_bytes(bytes(data))


def corrupt_magic(path):
    path.write_bytes(b"XXXX" + path.read_bytes()[4:])


@pytest.mark.parametrize("damage", [corrupt_truncate, corrupt_flip, corrupt_magic])
def test_a_damaged_entry_is_ignored_with_one_warning(tmp_path, caplog, damage):
    _, _, path = saved(tmp_path)
    damage(path)
    cache = PromptCache(tmp_path, "model-a", 1 << 30)
    fresh = ArrayMemory()
    with caplog.at_level(logging.WARNING, logger="warmload.prompt_cache"):
        assert cache.lookup(IDS, fresh) == (0, [])
        assert cache.lookup(IDS, fresh) == (0, [])
    assert not fresh.state.any()  # nothing was written into the memory
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_another_model_or_variant_finds_nothing(tmp_path):
    _, _, path = saved(tmp_path, identity="model-a|default")
    assert PromptCache(tmp_path, "model-a|avx512", 1 << 30).lookup(IDS, ArrayMemory())[0] == 0
    # an entry renamed to look like another model's is still refused by its header's key
    other = PromptCache(tmp_path, "model-b", 1 << 30)
    path.rename(other._path(IDS, ArrayMemory().layout()))
    assert other.lookup(IDS, ArrayMemory())[0] == 0


def test_the_folder_is_bounded_least_recently_used_first(tmp_path):
    cache = PromptCache(tmp_path, "m", 1 << 30)
    paths = []
    for i in range(3):
        ids = [i] + IDS[1:]
        paths.append(cache.save(ids, ArrayMemory()))
        os.utime(paths[-1], ns=(10**18 + i, 10**18 + i))
    size = paths[0].stat().st_size
    cache.lookup([0] + IDS[1:], ArrayMemory())  # a hit: entry 0 becomes the most recent
    bounded = PromptCache(tmp_path, "m", int(size * 3.5))
    bounded.save([3] + IDS[1:], ArrayMemory())
    assert paths[0].exists() and not paths[1].exists() and paths[2].exists()


def test_bad_settings_are_refused():
    with pytest.raises(RequestError):
        LoadConfig(prompt_cache_max_gb=0)
    with pytest.raises(RequestError):
        LoadConfig(prompt_cache="")


SYSTEM = (
    "You are a careful assistant for a hardware shop. Answer in one short sentence, name the "
    "product, its price in euros and whether it is in stock. Never invent products. " * 3
)


@pytest.fixture(scope="module")
def engines(smollm2_path, tmp_path_factory):
    from warmload.engine import load_engine

    folder = tmp_path_factory.mktemp("prompts")
    first = load_engine(smollm2_path, ctx=512, prompt_cache=str(folder))
    yield first, folder
    first.close()


def prefill(engine, ids):
    from warmload.sequence import Timings

    timings = Timings()
    with torch.inference_mode():
        return engine._prefill(ids, timings), timings


def test_a_new_engine_restores_the_system_prompt_bit_equal(engines, smollm2_path):
    from warmload.engine import load_engine

    first, folder = engines
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hammers?"}]
    ids = first.chat_prompt(messages)
    computed, timings = prefill(first, ids)
    assert timings.cached_tokens == 0
    first._join_saves()
    assert len(list(folder.glob(f"*{SUFFIX}"))) == 1
    second = load_engine(smollm2_path, ctx=512, prompt_cache=str(folder))
    try:
        other = [messages[0], {"role": "user", "content": "Do you sell drills?"}]
        restored, timings = prefill(second, second.chat_prompt(messages))
        boundary = timings.cached_tokens
        assert boundary >= len(first.tokenizer.encode(SYSTEM)) > MIN_PREFIX_TOKENS
        assert torch.equal(restored, computed)
        _, timings = prefill(second, second.chat_prompt(other))  # a new conversation
        assert timings.cached_tokens == boundary
    finally:
        second.close()
    off = load_engine(smollm2_path, ctx=512, prompt_cache="off")
    try:  # one pass over the whole prompt rounds differently (short passes take 8-bit
        # activations, see quant.matmul): as close as a prompt computed token by token
        whole, _ = prefill(off, ids)
        stepwise = off.logits(ids, decode_from=len(ids) - 8)[-1]
        bound = float((stepwise - whole).abs().max())
        print("split vs whole", float((whole - computed).abs().max()), "stepwise", bound)
        assert float((whole - computed).abs().max()) <= 2 * bound
    finally:
        off.close()


def test_the_kv_adapter_round_trips(engines):
    engine, _ = engines
    memory = memory_adapter(engine._cache)
    arrays = memory.snapshot(5)
    before = [a.copy() for a in arrays]
    for t in (*engine._cache.k, *engine._cache.v):
        t[0, :, :5] = 0
    memory.restore(before, 5)
    assert all(np.array_equal(a, b) for a, b in zip(memory.snapshot(5), before))


def test_the_batch_runner_saves_and_restores_a_system_prompt(smollm2_path, tmp_path):
    """serve's path: a runner saves the system prompt's state when its pass ends there; a
    runner of another engine (another replica) restores it and answers the same tokens."""
    from warmload.batch import BatchRequest, BatchRunner
    from warmload.engine import generation_config, load_engine

    def answer(engine, messages):
        runner = BatchRunner(engine, max_batch=2, prefill_chunk=64)
        chunks: list = []
        ids = engine.chat_prompt(messages)
        runner.add(
            BatchRequest(ids, generation_config({"max_tokens": 6, "temperature": 0}), chunks.append)
        )
        for _ in range(500):
            if runner.idle:
                break
            runner.step()
        done = [c.completion for c in chunks if c is not None and getattr(c, "completion", None)]
        assert done, chunks
        engine._join_saves()
        return done[0]

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Saws?"}]
    first = load_engine(smollm2_path, ctx=512, prompt_cache=str(tmp_path))
    try:
        cold = answer(first, messages)
    finally:
        first.close()
    assert cold.timings.cached_tokens == 0 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1
    second = load_engine(smollm2_path, ctx=512, prompt_cache=str(tmp_path))
    try:
        warm = answer(second, messages)
    finally:
        second.close()
    assert warm.timings.cached_tokens > MIN_PREFIX_TOKENS
    assert warm.token_ids == cold.token_ids
