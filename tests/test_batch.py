"""Per-row positions (batched decode) give the same logits as decoding each sequence alone, and
the BatchRunner (continuous batching) gives each request a continuation that is right for its
own sequence (tests/greedy_check.py), whatever else shares the batch."""

from __future__ import annotations

import pytest
import torch
from greedy_check import assert_greedy_continuation

from warmload.batch import BatchRequest, BatchRunner
from warmload.engine import generation_config, load_engine
from warmload.errors import WarmloadError


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


# -- BatchRunner (warmload/batch.py) ----------------------------------------------------------


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return load_engine(smollm2_path, ctx=512, threads=1)


class Recorder:
    """A request's emit(): collects chunks; `ended` once it got None."""

    def __init__(self) -> None:
        self.chunks: list = []
        self.error: BaseException | None = None
        self.ended = False

    def __call__(self, event) -> None:
        assert not self.ended, "event after the end"
        if event is None:
            self.ended = True
        elif isinstance(event, BaseException):
            self.error = event
        else:
            self.chunks.append(event)

    @property
    def completion(self):
        done = [c.completion for c in self.chunks if c.completion is not None]
        return done[0] if done else None

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


def submit(runner, engine, prompt, **options):
    recorder = Recorder()
    ids = engine.encode_prompt(prompt) if isinstance(prompt, str) else prompt
    request = BatchRequest(ids, generation_config(options), recorder, logprobs=None)
    runner.add(request)
    return request, recorder


def run_until_idle(runner, limit=2000):
    for _ in range(limit):
        if runner.idle:
            return
        runner.step()
    raise AssertionError("runner did not finish")


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4,",
    "The three primary colours are",
]


def test_batched_greedy_is_right_for_every_sequence(engine):
    runner = BatchRunner(engine, max_batch=4, prefill_chunk=8)
    recorders = [submit(runner, engine, p, max_tokens=16, temperature=0)[1] for p in PROMPTS]
    run_until_idle(runner)
    for prompt, recorder in zip(PROMPTS, recorders):
        assert recorder.ended and recorder.error is None
        done = recorder.completion
        assert_greedy_continuation(engine, engine.encode_prompt(prompt), done.token_ids)
        assert recorder.text == done.text == engine.tokenizer.decode(done.token_ids)
        assert done.finish_reason == "length" and len(done.token_ids) == 16
    assert runner.active == 0


def test_batched_greedy_is_right_for_every_sequence_gemma3(gemma3_path):
    gemma = load_engine(gemma3_path, ctx=256, threads=1)
    runner = BatchRunner(gemma, max_batch=3, prefill_chunk=4)
    prompts = PROMPTS[:3]
    recorders = [submit(runner, gemma, p, max_tokens=8, temperature=0)[1] for p in prompts]
    run_until_idle(runner)
    for prompt, recorder in zip(prompts, recorders):
        ids = gemma.encode_prompt(prompt)
        assert_greedy_continuation(gemma, ids, recorder.completion.token_ids)
    gemma.close()


def test_rows_sample_with_their_own_seed(engine):
    runner = BatchRunner(engine, max_batch=4)
    options = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    same = [submit(runner, engine, PROMPTS[0], seed=7, **options)[1] for _ in range(2)]
    other = submit(runner, engine, PROMPTS[0], seed=8, **options)[1]
    run_until_idle(runner)
    # identical rows compute identically; another seed draws another text
    assert same[0].completion.token_ids == same[1].completion.token_ids
    assert other.completion.token_ids != same[0].completion.token_ids


def test_long_prompt_prefills_in_chunks_between_decode_steps(engine):
    runner = BatchRunner(engine, max_batch=2, prefill_chunk=32)
    _, running = submit(runner, engine, PROMPTS[0], max_tokens=40, temperature=0)
    for _ in range(3):
        runner.step()
    long_prompt = engine.encode_prompt(" ".join(["word"] * 200))
    _, joining = submit(runner, engine, long_prompt, max_tokens=8, temperature=0)
    before = len(running.chunks)
    chunks_needed = -(-len(long_prompt) // 32)
    for _ in range(chunks_needed - 1):
        runner.step()
        assert joining.completion is None and not joining.chunks
    # the running stream got a token in every step while the prompt was being prefilled
    assert len(running.chunks) - before == chunks_needed - 1
    run_until_idle(runner)
    assert_greedy_continuation(engine, long_prompt, joining.completion.token_ids)
    assert joining.completion.timings.prompt_tokens == len(long_prompt)


def test_requests_arriving_together_prefill_in_one_step_within_the_budget(engine):
    runner = BatchRunner(engine, max_batch=4, prefill_chunk=12)
    prompts = [engine.encode_prompt(PROMPTS[i]) for i in (0, 1, 3, 4)]
    assert [len(ids) for ids in prompts] == [5, 6, 11, 5]
    recorders = [submit(runner, engine, ids, max_tokens=4, temperature=0)[1] for ids in prompts]
    runner.step()  # 5 + 6 tokens leave room under 12: the third joins; then 22 >= 12
    assert [bool(r.chunks) for r in recorders] == [True, True, True, False]
    run_until_idle(runner)
    for ids, recorder in zip(prompts, recorders):
        assert_greedy_continuation(engine, ids, recorder.completion.token_ids)


def test_cancel_frees_the_slot_at_the_next_step(engine):
    runner = BatchRunner(engine, max_batch=2)
    doomed, gone = submit(runner, engine, PROMPTS[2], max_tokens=200, temperature=0)
    _, kept = submit(runner, engine, PROMPTS[1], max_tokens=12, temperature=0)
    _, queued = submit(runner, engine, PROMPTS[3], max_tokens=6, temperature=0)
    for _ in range(4):
        runner.step()
    assert queued.chunks == []  # both slots busy
    doomed.cancelled.set()
    runner.step()
    assert gone.ended and gone.completion is None
    assert any(s.request is not None and s.request.emit is queued for s in runner.slots)
    run_until_idle(runner)
    for prompt, recorder, n in ((PROMPTS[1], kept, 12), (PROMPTS[3], queued, 6)):
        token_ids = recorder.completion.token_ids
        assert len(token_ids) == n
        assert_greedy_continuation(engine, engine.encode_prompt(prompt), token_ids)


def test_a_freed_row_reuses_its_prompt_prefix(engine):
    runner = BatchRunner(engine, max_batch=2)
    first = engine.encode_prompt(PROMPTS[2])
    _, a = submit(runner, engine, first, max_tokens=4, temperature=0)
    run_until_idle(runner)
    more = engine.tokenizer.encode(
        " and then the old fisherman walked slowly down to the harbour to count the boats",
        add_special=False,
    )
    follow_up = first + a.completion.token_ids + more
    _, b = submit(runner, engine, follow_up, max_tokens=6, temperature=0)
    run_until_idle(runner)
    # the row holds the first prompt and the fed-back tokens (all but the last sampled one);
    # kept positions end where a forward pass began (engine.reusable_prefix)
    held = len(first) + len(a.completion.token_ids) - 1
    assert held - 1 <= b.completion.timings.cached_tokens <= held
    assert_greedy_continuation(engine, follow_up, b.completion.token_ids)
    # the same prompt again, recomputed pass by pass from the cache: the very same answer
    for _ in range(2):
        _, again = submit(runner, engine, follow_up, max_tokens=6, temperature=0)
        run_until_idle(runner)
        assert again.completion.timings.cached_tokens == b.completion.timings.cached_tokens
        assert again.completion.token_ids == b.completion.token_ids


def test_stop_strings_and_logprobs_per_row(engine):
    runner = BatchRunner(engine, max_batch=2)
    full = engine.generate(PROMPTS[3], max_tokens=12, temperature=0)
    stop = full.text[3:5]
    _, cut = submit(runner, engine, PROMPTS[3], max_tokens=12, temperature=0, stop=(stop,))
    ids = engine.encode_prompt(PROMPTS[0])
    recorder = Recorder()
    runner.add(BatchRequest(ids, generation_config(dict(max_tokens=3, temperature=0)), recorder, 2))
    run_until_idle(runner)
    assert cut.completion.finish_reason == "stop"
    assert cut.text == cut.completion.text == full.text[: full.text.index(stop)]
    tokens = [c for c in recorder.chunks if c.token_id is not None]
    assert [c.token_id for c in tokens] == recorder.completion.token_ids
    for c in tokens:  # greedy: the chosen token is the most likely one
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0][0] == c.token_id
        assert c.logprob == pytest.approx(c.top_logprobs[0][1], abs=1e-5)


def test_close_fails_running_and_waiting_requests(engine):
    runner = BatchRunner(engine, max_batch=1)
    _, running = submit(runner, engine, PROMPTS[0], max_tokens=50, temperature=0)
    _, waiting = submit(runner, engine, PROMPTS[1], max_tokens=50, temperature=0)
    runner.step()
    runner.close()
    for recorder in (running, waiting):
        assert recorder.ended and isinstance(recorder.error, WarmloadError)
        assert recorder.completion is None


@pytest.mark.parametrize("length,generate", [(12, 0), (12, 3), (150, 0)])
def test_echo_scores_every_prompt_token(engine, length, generate):
    """prompt_logprobs (echo): each prompt token's logprob from the previous position's logits,
    from a short chunk of the ragged pass (12) and from chunks run alone (150); max_tokens=0
    runs the prompt and samples nothing."""
    runner = BatchRunner(engine, 2)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    prompt = engine.tokenizer.encode(text, add_special=False)[:length]
    other, _ = submit(runner, engine, "1, 2, 3,", max_tokens=8, temperature=0)  # shares steps
    recorder = Recorder()
    cfg = generation_config({"max_tokens": generate, "temperature": 0})
    runner.add(BatchRequest(prompt, cfg, recorder, logprobs=2, prompt_logprobs=True))
    run_until_idle(runner)
    assert recorder.error is None and recorder.ended
    scored = [s for c in recorder.chunks for s in (c.prompt_logprobs or [])]
    assert [token for token, _, _ in scored] == prompt
    assert scored[0][1] is None
    expected = engine.logits(prompt).log_softmax(-1)
    for i in range(1, length):
        assert scored[i][1] == pytest.approx(float(expected[i - 1, prompt[i]]), abs=0.05)
        assert len(scored[i][2]) == 2
    assert len(recorder.completion.token_ids) == generate


def test_a_request_whose_state_cannot_be_built_fails_alone(engine, monkeypatch):
    """An exception while admitting a request (a seed torch refuses, a broken constraint)
    ends that request with the error; the batch and the other rows go on."""
    runner = BatchRunner(engine, 2)
    good, good_rec = submit(runner, engine, "Hello", max_tokens=4, temperature=0)
    bad_rec = Recorder()
    cfg = generation_config({"max_tokens": 4, "seed": 2**64})
    runner.add(BatchRequest([1, 2, 3], cfg, bad_rec))
    run_until_idle(runner)
    assert bad_rec.ended and "seed" in str(bad_rec.error)
    assert good_rec.completion is not None and len(good_rec.completion.token_ids) == 4


def test_fail_all_ends_everything_and_the_runner_serves_again(engine):
    runner = BatchRunner(engine, 1)
    running, running_rec = submit(runner, engine, "Once upon a time", max_tokens=50)
    waiting, waiting_rec = submit(runner, engine, "Hello", max_tokens=5)
    runner.step()
    runner.fail_all(WarmloadError("boom"))
    assert running_rec.ended and waiting_rec.ended and runner.idle
    assert "boom" in str(running_rec.error) and "boom" in str(waiting_rec.error)
    _, again = submit(runner, engine, "Hello", max_tokens=3, temperature=0)
    run_until_idle(runner)
    assert len(again.completion.token_ids) == 3
