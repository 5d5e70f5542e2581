"""The HTTP server against a live uvicorn on loopback, driven by the official openai client
and plain HTTP: answers, streaming, errors that never take it down, the model cache."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from greedy_check import assert_greedy_continuation  # noqa: E402
from live_server import LiveServer, free_port, read_until, record_completions  # noqa: E402

from warmload.config import LoadConfig, ServerConfig  # noqa: E402
from warmload.server.app import create_app  # noqa: E402

API_KEY = "test-key"


@pytest.fixture(scope="module")
def server(smollm2_path):
    config = ServerConfig(
        models=(("smollm2", str(smollm2_path)),),
        port=free_port(),
        api_key=API_KEY,
        max_body_bytes=64 * 1024,
        load=LoadConfig(ctx=512, threads=2),
    )
    with LiveServer(config, api_key=API_KEY) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def engine_of(server):
    return server.state.cache.entries["smollm2"].engine


def test_completion_matches_the_engine(server, client):
    out = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0
    )
    expected = engine_of(server).generate("The capital of France is", max_tokens=12, temperature=0)
    assert out.choices[0].text == expected.text
    assert out.usage.completion_tokens == len(expected.token_ids)
    assert out.choices[0].finish_reason == expected.finish_reason


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, temperature=0
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_logprobs(client):
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = out.choices[0].logprobs.content
    assert len(content) >= 1
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/v1/completions", b"{not json", 400, "body"),
        ("/v1/completions", {"prompt": 5}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "stop": ["a"] * 50}, 400, "stop"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages"),
        ("/v1/completions", b"[1, 2]", 400, "body"),
        ("/v1/completions", json.dumps({"prompt": "x" * 70000}).encode(), 400, "body"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server, path, body, status, param
):
    code, data = server.post(path, body)
    assert code == status
    assert data["error"]["param"] == param
    assert data["error"]["message"]
    code, _ = server.post("/v1/completions", {"prompt": "ok", "max_tokens": 1})
    assert code == 200


def test_api_key_is_required(server):
    req = urllib.request.Request(server.url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    assert server.get("/v1/models")[1]["data"][0]["id"] == "smollm2"


def test_disconnect_mid_stream_frees_the_model(server):
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "stream": True,
        "temperature": 0.8,
        "seed": 1,
    }
    with server.open_stream("/v1/completions", body) as s:
        assert b"data:" in read_until(s, b"data:")
    started = time.monotonic()
    code, data = server.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert code == 200
    assert time.monotonic() - started < 20  # did not wait for 400 tokens of a dead stream
    entry = server.state.cache.entries["smollm2"]
    deadline = time.monotonic() + 10
    while (entry.active or entry.scheduler.runner.active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry.active == 0
    assert entry.scheduler.runner.active == 0  # its slot and KV row are free


def test_health_metrics_models_and_ollama_routes(server):
    assert server.get("/health")[1]["status"] == "ok"
    code, text, _ = server.request("GET", "/metrics")
    metrics = text.decode()
    assert code == 200
    assert "warmload_requests_total" in metrics
    assert "warmload_time_to_first_token_seconds_count" in metrics
    assert 'warmload_model_resident_bytes{model="smollm2"}' in metrics
    assert server.get("/api/tags")[1]["models"][0]["name"] == "smollm2"
    assert server.get("/api/ps")[1]["models"][0]["name"] == "smollm2"
    code, raw, _ = server.request(
        "POST",
        "/api/generate",
        json.dumps(
            {"model": "smollm2", "prompt": "Hello", "options": {"num_predict": 5, "temperature": 0}}
        ).encode(),
    )
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert code == 200 and lines[-1]["done"] is True and lines[-1]["eval_count"] <= 5
    assert "".join(x["response"] for x in lines[:-1])
    code, chat = server.post(
        "/api/chat",
        {
            "model": "smollm2",
            "stream": False,
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 3},
        },
    )
    assert code == 200 and chat["done"] is True and chat["message"]["role"] == "assistant"


def test_single_flight_load_and_keep_alive_unload(smollm2_path):
    config = ServerConfig(
        models=(("a", str(smollm2_path)),), port=free_port(), load=LoadConfig(ctx=256, threads=2)
    )
    app = create_app(config)
    cache = app.state.warmload.cache

    async def scenario():
        entries = await asyncio.gather(*(cache.acquire("a") for _ in range(10)))
        for entry in entries:
            cache.release(entry)
        assert cache.counters["loads"] == 1
        assert cache.entries["a"].state == "ready"
        entry = await cache.acquire("a", keep_alive=0)
        cache.release(entry)  # keep_alive 0: unloaded as soon as it is idle
        assert cache.entries["a"].state == "unloaded"
        cache.close()

    asyncio.run(scenario())


def test_default_model_is_named_in_answers(server):
    code, out = server.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert code == 200 and out["model"] == "smollm2"
    code, out = server.post(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    )
    assert code == 200 and out["model"] == "smollm2"


def test_completion_stream_with_the_openai_client(server, client):
    prompt = "The three primary colours are"
    whole = client.completions.create(model="smollm2", prompt=prompt, max_tokens=10, temperature=0)
    stream = client.completions.create(
        model="smollm2", prompt=prompt, max_tokens=10, temperature=0, stream=True
    )
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason == "length"


def test_concurrent_requests_decode_together(server, client, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["1, 2, 3, 4,", "The capital of Italy is", "def add(a, b):", "Monday, Tuesday,"]
    runner = server.state.cache.entries["smollm2"].scheduler.runner
    steps_before = runner.steps
    seen = record_completions(monkeypatch)

    def ask(prompt):
        out = client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=16, temperature=0
        )
        return out.choices[0].text, out.usage.completion_tokens

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    engine = engine_of(server)
    made = {tuple(ids): done for ids, done in seen}
    for prompt, (text, n) in zip(prompts, answers):
        done = made[tuple(engine.encode_prompt(prompt))]
        assert text == done.text and n == len(done.token_ids) == 16
        assert_greedy_continuation(engine, engine.encode_prompt(prompt), done.token_ids)
    # one forward pass per step serves several requests: far fewer steps than tokens
    assert runner.steps - steps_before < sum(n for _, n in answers) * 0.75


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_count_requests_tokens_and_cache_events(server, client):
    before = metric_values(server.request("GET", "/metrics")[1].decode())
    out = client.completions.create(model="smollm2", prompt="Hello there", max_tokens=5)
    after = metric_values(server.request("GET", "/metrics")[1].decode())
    model = 'model="smollm2"'

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew(f"warmload_prompt_tokens_total{{{model}}}") == out.usage.prompt_tokens
    assert grew(f"warmload_generated_tokens_total{{{model}}}") == out.usage.completion_tokens
    assert grew('warmload_requests_total{path="/v1/completions"}') == 1
    assert grew("warmload_time_to_first_token_seconds_count") == 1
    assert grew("warmload_time_per_output_token_seconds_count") >= out.usage.completion_tokens - 2
    assert grew('warmload_model_cache_events{event="hits"}') == 1
    assert after["warmload_model_load_seconds_count"] == 1
    assert after[f"warmload_model_resident_bytes{{{model}}}"] > 50e6
