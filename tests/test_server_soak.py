"""Soak: a few hundred bounded requests from several clients on 127.0.0.1, mixing good ones
(each answer is what the server generated for it, and that is a right greedy continuation of
its prompt: tests/greedy_check.py), bad ones (each must get its 4xx error body) and streams
cancelled mid-way (the client drops the socket). At the end every slot is free and the
server's RSS is flat (within 5% of what it was after a warm-up round)."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from greedy_check import assert_greedy_continuation  # noqa: E402
from live_server import LiveServer, free_port, read_until, record_completions  # noqa: E402

from warmload.config import LoadConfig, ServerConfig  # noqa: E402
from warmload.memstats import current_rss_bytes  # noqa: E402

CLIENTS = 4
ROUNDS = 2  # after the warm-up round; each round is CLIENTS * len(PLAN) requests
GOOD = [
    ("1, 2, 3, 4,", 6),
    ("The capital of France is", 5),
    ("Monday, Tuesday,", 4),
    ("def add(a, b):", 6),
]
BAD = [  # (body, expected status, expected param)
    (b"{not json", 400, "body"),
    (b'{"prompt": 7}', 400, "prompt"),
    (b'{"prompt": "x", "max_tokens": "many"}', 400, "max_tokens"),
    (b'{"prompt": "x", "model": "nope"}', 404, "model"),
    (b'{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
    (b'{"prompt": "x", "stop": ["a","b","c","d","e","f","g","h","i"]}', 400, "stop"),
    (json.dumps({"prompt": "x" * 40000}).encode(), 400, "body"),
]
PLAN = ["good"] * 8 + ["bad"] * 7 + ["cancel"] * 3  # per client per round


def one_request(live: LiveServer, kind: str, rng: random.Random, answers: list) -> str | None:
    """Runs one request; returns a problem description, or None when it behaved. Good answers
    are appended to `answers` as (prompt, text) for the checks at the end."""
    if kind == "good":
        prompt, n = rng.choice(GOOD)
        code, body = live.post(
            "/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0}
        )
        if code != 200 or not 0 < body["usage"]["completion_tokens"] <= n:
            return f"good {prompt!r}: {code} {body}"
        answers.append((prompt, body["choices"][0]["text"]))
        return None
    if kind == "bad":
        raw, status, param = rng.choice(BAD)
        code, body = live.post("/v1/completions", raw)
        ok = code == status and body["error"]["param"] == param and body["error"]["message"]
        return None if ok else f"bad {raw[:40]!r}: {code} {body}"
    body = {"prompt": "Once upon a time", "max_tokens": 200, "stream": True, "seed": 3}
    with live.open_stream("/v1/completions", body) as sock:
        got = read_until(sock, b"data:", seconds=60)
    return None if b"data:" in got else f"cancelled stream got {got[:80]!r}"


def run_round(live: LiveServer, answers: list, seed: int) -> list[str]:
    problems: list[str] = []

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        plan = PLAN[:]
        rng.shuffle(plan)
        for kind in plan:
            try:
                problem = one_request(live, kind, rng, answers)
            except Exception as exc:  # a dead server or a hung request is a failure too
                problem = f"{kind}: {exc!r}"
            if problem:
                problems.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return problems


def wait_idle(live: LiveServer, seconds: float = 30) -> None:
    entry = live.state.cache.entries["m"]
    deadline = time.monotonic() + seconds
    while (entry.active or entry.scheduler.runner.active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry.active == 0 and entry.scheduler.runner.active == 0
    assert not entry.scheduler.runner.waiting


def check_answers(engine, answers: list, made: list) -> None:
    """Each answer's text is one the server generated for that prompt, and each generated
    token sequence is a right greedy continuation of its prompt."""
    generated: dict[tuple[int, ...], set[tuple[tuple[int, ...], str]]] = {}
    for prompt_ids, completion in made:
        key = tuple(prompt_ids)
        generated.setdefault(key, set()).add((tuple(completion.token_ids), completion.text))
    for prompt, _ in GOOD:
        ids = engine.encode_prompt(prompt)
        for token_ids, _ in generated.get(tuple(ids), ()):
            assert_greedy_continuation(engine, ids, list(token_ids))
    for prompt, text in answers:
        texts = {t for _, t in generated[tuple(engine.encode_prompt(prompt))]}
        assert text in texts, (prompt, text, texts)


def test_soak_good_bad_and_cancelled_requests(smollm2_path, monkeypatch):
    config = ServerConfig(
        models=(("m", str(smollm2_path)),),
        port=free_port(),
        max_batch=4,
        max_body_bytes=32 * 1024,
        load=LoadConfig(ctx=256, threads=1),
    )
    made = record_completions(monkeypatch)
    answers: list = []
    with LiveServer(config) as live:
        engine = live.state.cache.entries["m"].engine
        assert run_round(live, answers, seed=0) == []  # warm-up: allocations settle
        wait_idle(live)
        rss_before = current_rss_bytes()
        problems = []
        for seed in range(1, ROUNDS + 1):
            problems += run_round(live, answers, seed)
        assert problems == []
        wait_idle(live)
        rss_after = current_rss_bytes()
        assert live.get("/health")[1]["status"] == "ok"
        check_answers(engine, answers, made)
    total = CLIENTS * len(PLAN) * (ROUNDS + 1)
    assert total >= 200
    assert rss_after <= rss_before * 1.05, (rss_before, rss_after)
