"""No request can break a model: every field range-checked at the boundary (400s naming it), a
failure inside a model's scheduler ends only the requests it touched and the model keeps
serving (or is reloaded), abandoned requests are cancelled, and SIGTERM stops the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn")

from live_server import LiveServer, free_port, read_until  # noqa: E402

from warmload.batch import BatchRunner  # noqa: E402
from warmload.config import LoadConfig, ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def live(smollm2_path):
    config = ServerConfig(
        models=(("smollm2", str(smollm2_path)),),
        port=free_port(),
        load=LoadConfig(ctx=512, threads=2),
    )
    with LiveServer(config) as server:
        yield server


def still_serves(live) -> None:
    code, body = live.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert code == 200, body
    assert body["usage"]["completion_tokens"] >= 1
    runner = live.state.cache.entries["smollm2"].scheduler.runner
    deadline = time.monotonic() + 10
    while runner.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.active == 0 and not runner.waiting


CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {**CHAT, "seed": 2**64}, "seed"),
        ("/v1/chat/completions", {**CHAT, "seed": -(2**63) - 1}, "seed"),
        ("/v1/completions", {"prompt": "x", "seed": 10**30}, "seed"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
            "temperature",
        ),
        ("/v1/chat/completions", b'{"messages": [], "temperature": Infinity}', "body"),
        ("/v1/chat/completions", b'{"messages": [], "temperature": NaN}', "body"),
        ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, "top_p"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 17}, "n"),
        ("/v1/completions", {"prompt": ["a"] * 8, "n": 9}, "n"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {"prompt": "x", "logprobs": -1}, "logprobs"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": 101}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"49152": 1}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format"),
        ("/v1/completions", {"prompt": "x", "echo": True, "suffix": "y"}, "suffix"),
        ("/v1/completions", ("[" * 100_000 + "]" * 100_000).encode(), "body"),
        ("/v1/completions", b'{"prompt": ' + b"[" * 70 + b"]" * 70 + b"}", "body"),
    ],
)
def test_out_of_range_fields_get_400_naming_them(live, path, body, param):
    code, data = live.post(path, body)
    assert code == 400, data
    assert data["error"]["param"] == param
    still_serves(live)


def test_top_seed_values_are_accepted(live):
    for seed in (2**64 - 1, -(2**63), 0):
        code, data = live.post("/v1/chat/completions", {**CHAT, "seed": seed})
        assert code == 200, data


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"options": {"seed": 2**64}}, "seed"),
        ({"options": {"temperature": -1}}, "temperature"),
        ({"options": {"num_predict": -3}}, "num_predict"),
        ({"images": ["aGVsbG8="]}, "images"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"format": 5}, "format"),
    ],
)
def test_ollama_errors_are_strings_like_ollamas(live, body, needle):
    code, data = live.post("/api/generate", {"model": "smollm2", "prompt": "Hi", **body})
    assert code == 400
    assert isinstance(data["error"], str) and needle in data["error"]
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], **body}
    code, data = live.post("/api/chat", chat)
    assert code == 400 and isinstance(data["error"], str)
    still_serves(live)


def test_ollama_chat_images_and_unknown_model(live):
    messages = [{"role": "user", "content": "what is this", "images": ["aGVsbG8="]}]
    code, data = live.post("/api/chat", {"model": "smollm2", "messages": messages})
    assert code == 400 and "images" in data["error"]
    code, data = live.post("/api/show", {"model": "nope"})
    assert code == 404 and "not found" in data["error"]


def test_max_tokens_zero_generates_nothing(live):
    code, data = live.post("/v1/completions", {"prompt": "Hello there", "max_tokens": 0})
    assert code == 200
    assert data["choices"][0]["text"] == "" and data["usage"]["completion_tokens"] == 0
    assert data["choices"][0]["finish_reason"] == "length"
    code, data = live.post(
        "/api/generate", {"prompt": "Hi", "stream": False, "options": {"num_predict": 0}}
    )
    assert code == 200 and data["response"] == "" and data["eval_count"] == 0


def test_a_failing_step_ends_its_requests_and_the_model_keeps_serving(live, monkeypatch):
    scheduler = live.state.cache.entries["smollm2"].scheduler
    errors_before = scheduler.errors
    original = BatchRunner.step
    calls = {"n": 0}

    def broken_step(self):
        calls["n"] += 1
        if calls["n"] == 2:  # after admission and a first pass: mid-generation
            raise ValueError("Overflow when unpacking long long")
        return original(self)

    monkeypatch.setattr(BatchRunner, "step", broken_step)
    code, data = live.post("/v1/completions", {"prompt": "Once", "max_tokens": 50})
    assert code == 500 and "internal error" in data["error"]["message"]
    monkeypatch.setattr(BatchRunner, "step", original)
    still_serves(live)
    assert scheduler.errors == errors_before + 1
    health = live.get("/health")[1]
    assert health["status"] == "ok"
    assert "Overflow" in health["scheduler_errors"]["smollm2"]["last_error"]


def test_a_request_failing_at_admission_is_the_only_one_to_fail(live, monkeypatch):
    import warmload.batch as batch

    real = batch.SequenceState

    def refuse(*args, **kwargs):
        if kwargs.get("processor") == "poison":
            raise ValueError("Overflow when unpacking long long")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "SequenceState", refuse)
    scheduler = live.state.cache.entries["smollm2"].scheduler
    import asyncio

    async def both():
        bad = scheduler.submit([1, 2, 3], {"max_tokens": 3}, processor="poison")
        good = scheduler.submit([1, 2, 3], {"max_tokens": 3, "temperature": 0})
        with pytest.raises(ValueError):
            async for _ in bad:
                pass
        return [c async for c in good]

    loop = asyncio.new_event_loop()
    try:
        chunks = loop.run_until_complete(both())
    finally:
        loop.close()
    assert chunks[-1].completion.finish_reason == "length"
    monkeypatch.setattr(batch, "SequenceState", real)
    still_serves(live)


def test_a_dead_scheduler_marks_the_model_failed_and_the_next_request_reloads_it(live, monkeypatch):
    entry = live.state.cache.entries["smollm2"]
    old = entry.scheduler

    def explode(self, error):
        raise RuntimeError("cleanup broke")

    monkeypatch.setattr(BatchRunner, "fail_all", explode)
    monkeypatch.setattr(BatchRunner, "step", lambda self: (_ for _ in ()).throw(KeyError("x")))
    code, _ = live.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3})
    assert code == 500
    old.thread.join(10)
    assert old.failed and entry.state == "failed"
    code, health = live.get("/health")
    assert code == 500 and health["status"] == "failed" and health["error"]
    monkeypatch.undo()
    still_serves(live)  # reloaded
    assert entry.scheduler is not old and live.state.cache.counters["reloads"] >= 1
    assert live.get("/health")[1]["status"] == "ok"


def wait_idle(live, seconds: float) -> float:
    entry = live.state.cache.entries["smollm2"]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if entry.scheduler.runner.active == 0 and entry.active == 0:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"still running after {seconds} s")


@pytest.mark.parametrize("path", ["/v1/completions", "/api/generate"])
def test_an_abandoned_non_streaming_request_is_cancelled(live, path):
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0.7, "seed": 3}
    if path == "/api/generate":
        body = {"prompt": "Once upon a time", "stream": False, "options": {"num_predict": 400}}
    runner = live.state.cache.entries["smollm2"].scheduler.runner
    steps = runner.steps
    with live.open_stream(path, body):
        deadline = time.monotonic() + 30
        while runner.steps < steps + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.active == 1
        closed_at = runner.steps
    wait_idle(live, 5)
    assert runner.steps - closed_at <= 5  # the step in flight, then dropped at the next one
    still_serves(live)


def test_sigterm_stops_the_server_with_a_stream_open(smollm2_path, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "warmload", "serve", "-m", f"s={smollm2_path}"]
    cmd += ["--port", str(port), "-c", "512", "-t", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from live_server import LiveServer as _  # noqa: F401

        deadline = time.monotonic() + 120
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.loads(r.read())["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.1)
        import socket

        body = json.dumps({"prompt": "Once", "max_tokens": 400, "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"data:" in read_until(sock, b"data:")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
