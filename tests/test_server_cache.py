"""The server's model cache and start-up: /health while loading (with progress), --no-wait
503 + Retry-After, a failed load is that model's 500 only, LRU eviction under --max-models and
--memory-budget, keep-alive, Ollama's load/unload by an empty prompt, background re-warm, and
the `serve` command line."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from live_server import LiveServer, free_port, read_until  # noqa: E402

import warmload.engine  # noqa: E402
from warmload.cli import build_parser  # noqa: E402
from warmload.cli.serve import server_config  # noqa: E402
from warmload.config import LoadConfig, ServerConfig  # noqa: E402
from warmload.errors import RequestError  # noqa: E402
from warmload.server.app import create_app  # noqa: E402
from warmload.server.registry import ModelCache  # noqa: E402

LOAD = LoadConfig(ctx=128, threads=1)


def config_for(models, **overrides) -> ServerConfig:
    return ServerConfig(models=tuple(models), port=free_port(), load=LOAD, **overrides)


def test_health_while_loading_and_no_wait_503(smollm2_path, monkeypatch):
    gate = threading.Event()
    real_load = warmload.engine.load_engine

    def gated_load(path, progress=None, **options):
        progress(50, 100)  # the loader reports bytes as they arrive
        assert gate.wait(20)
        return real_load(path, progress=progress, **options)

    monkeypatch.setattr(warmload.engine, "load_engine", gated_load)
    live = LiveServer(config_for([("m", str(smollm2_path))], no_wait=True))
    live.wait_ready = False
    with live:
        deadline = time.monotonic() + 30
        while live.get("/health")[1].get("progress") != 0.5 and time.monotonic() < deadline:
            time.sleep(0.02)
        code, health = live.get("/health")
        status, body, headers = live.request(
            "POST", "/v1/completions", b'{"prompt": "Hi", "max_tokens": 1}'
        )
        gate.set()
        assert (code, health["status"], health["progress"]) == (200, "loading", 0.5)
        assert health["models"] == {"m": "loading"}
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert b"loading" in body
        while live.get("/health")[1]["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.02)
        code, out = live.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert code == 200 and out["usage"]["completion_tokens"] >= 1
        _, metrics, _ = live.request("GET", "/metrics")
        assert "warmload_model_load_seconds_count 1" in metrics.decode()


def test_a_failed_load_is_a_500_for_that_model_only(smollm2_path, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 60)  # a header that ends too soon
    with LiveServer(config_for([("good", str(smollm2_path)), ("bad", str(bad))])) as live:
        code, err = live.post("/v1/completions", {"model": "bad", "prompt": "x"})
        assert code == 500 and "bad" in err["error"]["message"]
        assert err["error"]["type"] == "server_error"
        code, out = live.post("/v1/completions", {"model": "good", "prompt": "Hi", "max_tokens": 1})
        assert code == 200 and out["model"] == "good"
        assert live.get("/health")[1]["models"] == {"good": "ready", "bad": "failed"}
        assert live.state.cache.counters["load_failures"] == 1


def run_cache(config: ServerConfig, scenario) -> None:
    cache = create_app(config).state.warmload.cache

    async def main():
        try:
            await scenario(cache)
        finally:
            cache.close()

    asyncio.run(main())


async def use(cache, model_id: str, **options) -> None:
    cache.release(await cache.acquire(model_id, **options))


def loaded(cache) -> list[str]:
    return sorted(e.id for e in cache.entries.values() if e.engine is not None)


def test_lru_eviction_under_max_models(smollm2_path):
    models = [(name, str(smollm2_path)) for name in "abc"]

    async def scenario(cache):
        await use(cache, "a")
        await use(cache, "b")
        await use(cache, "a")  # now b is the least recently used
        await use(cache, "c")
        assert loaded(cache) == ["a", "c"]
        assert cache.counters["evictions"] == 1
        held = await cache.acquire("a")  # a busy model is never evicted...
        await use(cache, "b")  # ...so c goes
        assert loaded(cache) == ["a", "b"]
        cache.release(held)
        assert cache.counters["loads"] == 4

    run_cache(config_for(models, max_models=2), scenario)


def test_memory_budget_evicts_least_recently_used(smollm2_path):
    size = smollm2_path.stat().st_size
    models = [(name, str(smollm2_path)) for name in "ab"]

    async def scenario(cache):
        await use(cache, "a")
        assert cache.entries["a"].nbytes >= size * 0.9  # weights + the batch's KV cache
        await use(cache, "b")  # a + b exceed the budget: a leaves
        assert loaded(cache) == ["b"]
        assert cache.counters["evictions"] == 1

    run_cache(config_for(models, max_models=4, memory_budget_bytes=int(size * 1.6)), scenario)


def test_keep_alive_expiry_and_forever(smollm2_path):
    async def scenario(cache):
        await use(cache, "a", keep_alive=0.2)
        await use(cache, "b", keep_alive=-1)
        await asyncio.sleep(0.3)
        cache.sweep()
        assert loaded(cache) == ["b"]  # a expired, b stays forever
        assert cache.entries["b"].expires_at() is None

    models = [(name, str(smollm2_path)) for name in "ab"]
    run_cache(config_for(models, max_models=2), scenario)


def test_ollama_load_and_unload_by_empty_prompt(smollm2_path):
    with LiveServer(config_for([("d", str(smollm2_path)), ("m", str(smollm2_path))])) as live:
        assert "m" not in [x["name"] for x in live.get("/api/ps")[1]["models"]]
        code, body = live.post("/api/generate", {"model": "m", "keep_alive": "10m"})
        assert code == 200 and body["done_reason"] == "load" and body["response"] == ""
        ps = {x["name"]: x for x in live.get("/api/ps")[1]["models"]}
        assert ps["m"]["expires_at"] is not None and ps["m"]["active_requests"] == 0
        code, body = live.post("/api/chat", {"model": "m", "messages": [], "keep_alive": 0})
        assert code == 200 and body["done_reason"] == "unload"
        assert "m" not in [x["name"] for x in live.get("/api/ps")[1]["models"]]
        assert live.state.cache.entries["m"].state == "unloaded"
        code, body = live.post("/api/generate", {"model": "m", "keep_alive": -1})
        assert body["done_reason"] == "load"
        ps = {x["name"]: x for x in live.get("/api/ps")[1]["models"]}
        assert ps["m"]["expires_at"] is None  # -1: kept forever
        sock = live.open_stream(  # unloading a busy model waits for its requests
            "/api/generate",
            {"model": "m", "prompt": "Count: 1, 2, 3,", "options": {"num_predict": 20}},
        )
        with sock:
            assert b"response" in read_until(sock, b"response")
            code, body = live.post("/api/generate", {"model": "m", "keep_alive": 0})
            assert body["done_reason"] == "unload"
            assert live.state.cache.entries["m"].state == "ready"  # still streaming
            assert b'"done": true' in read_until(sock, b'"done": true')
        deadline = time.monotonic() + 10
        while live.state.cache.entries["m"].state != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.state.cache.entries["m"].state == "unloaded"
        assert live.state.cache.entries["m"].keep_alive == 300.0  # back to the default
        code, body = live.post("/api/generate", {"model": "nope"})
        assert code == 404 and "'nope' not found" in body["error"]  # Ollama's string body


def test_evicted_pages_are_rewarmed_in_the_background(smollm2_path, monkeypatch):
    async def scenario(cache):
        entry = await cache.acquire("a")
        residency = {"value": 0.3}
        monkeypatch.setattr(entry.engine, "residency", lambda: residency["value"])
        assert cache.rewarm() == []  # in use: left alone
        cache.release(entry)
        assert cache.rewarm() == ["a"]
        entry.rewarm.join(30)
        assert not entry.rewarm.is_alive() and cache.counters["rewarms"] == 1
        residency["value"] = 0.99
        assert cache.rewarm() == []  # resident enough

    run_cache(config_for([("a", str(smollm2_path))]), scenario)


def test_serve_command_line():
    args = build_parser().parse_args(
        ["serve", "-m", "a=x.gguf", "-m", "y.gguf", "-M", "z=w", "--memory-budget", "1.5G"]
        + ["--parallel", "4", "--no-wait", "-c", "256"]
    )
    config = server_config(args)
    assert config.models == (("a", "x.gguf"), ("y", "y.gguf"), ("z", "w"))
    assert config.memory_budget_bytes == int(1.5 * (1 << 30))
    assert (config.max_batch, config.no_wait, config.load.ctx) == (4, True, 256)
    assert config.host == "127.0.0.1"
    args.memory_budget = "lots"
    with pytest.raises(RequestError, match="memory-budget"):
        server_config(args)


def test_aliases_and_fallback_from_the_command_line(smollm2_path):
    args = build_parser().parse_args(
        ["serve", "-m", f"s={smollm2_path}", "--alias", "gpt-3.5-turbo=s"]
        + ["--fallback-model", "s"]
    )
    config = server_config(args)
    assert config.aliases == (("gpt-3.5-turbo", "s"),) and config.fallback_model == "s"
    cache = ModelCache(config, make_scheduler=None)
    assert cache.entry("gpt-3.5-turbo").id == "s" and cache.entry("anything").id == "s"
    with pytest.raises(RequestError, match="NAME=MODEL"):
        server_config(build_parser().parse_args(["serve", "--alias", "nothing"]))
    bad = build_parser().parse_args(["serve", "-m", f"s={smollm2_path}", "--alias", "x=t"])
    with pytest.raises(RequestError, match="'t', which is not served"):
        ModelCache(server_config(bad), make_scheduler=None)
    plain = ModelCache(server_config(build_parser().parse_args(["serve", "-m", "s=x"])), None)
    with pytest.raises(RequestError, match="not found"):
        plain.entry("gpt-3.5-turbo")
