"""Kept warm: the served models' residency sampled (a deterministic fake source here), idle
evicted models re-warmed in the background at most once per interval, and the samples and
re-warms shown in /metrics and /api/ps."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("starlette")

from live_server import free_port  # noqa: E402

from warmload.config import LoadConfig, ServerConfig  # noqa: E402
from warmload.server.app import create_app  # noqa: E402
from warmload.server.ollama_models import ps  # noqa: E402


def test_residency_is_sampled_and_rewarms_are_throttled_and_shown(smollm2_path, monkeypatch):
    config = ServerConfig(
        models=(("a", str(smollm2_path)),),
        port=free_port(),
        load=LoadConfig(ctx=128, threads=1, prompt_cache="off"),
    )
    state = create_app(config).state.warmload
    cache = state.cache
    warms: list[str] = []

    class DoneThread:
        def is_alive(self) -> bool:
            return False

    def fake_warm(checkpoint, mode):
        warms.append(mode)
        return DoneThread()

    monkeypatch.setattr("warmload.loader.warm.warm_in_background", fake_warm)

    async def scenario():
        entry = await cache.acquire("a")
        cache.release(entry)
        residency = {"value": 1.0}
        monkeypatch.setattr(entry.engine, "residency", lambda: residency["value"])
        assert cache.rewarm() == [] and entry.residency == 1.0
        residency["value"] = 0.25  # the OS evicted most of the idle model's pages
        assert cache.rewarm(min_interval=3600) == ["a"]
        assert cache.rewarm(min_interval=3600) == []  # throttled: once per interval
        assert entry.residency == 0.25 and entry.rewarms == 1 and warms == ["auto"]
        assert cache.rewarm(min_interval=0) == ["a"]  # the interval passed
        assert 'warmload_model_residency{model="a"} 0.25' in state.metrics.render()
        body = (await ps(None, state)).body
        assert b'"residency":0.25' in body and b'"rewarms":2' in body
        cache.close()
        assert cache.residencies() == {}

    asyncio.run(scenario())
