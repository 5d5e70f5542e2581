"""The server's model cache: each model loaded once and shared, single-flight loads, LRU
eviction under a model count and a memory budget, and a keep-alive per model.

Modelled on Ollama's scheduler (server/sched.go): a model stays loaded for keep_alive after its
last request (default 5 minutes, negative: forever, 0: unload when idle).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmload.config import ServerConfig
from warmload.errors import ModelLoadError, RequestError, WarmloadError
from warmload.memstats import release_freed_memory

log = logging.getLogger("warmload.server")

MODEL_SUFFIXES = (".gguf", ".safetensors")
REWARM_BELOW = 0.9  # re-warm an idle model when less of its file than this is resident
REWARM_MIN_INTERVAL = 60.0  # seconds between two re-warms of one model (throttle)


class ModelNotFoundError(RequestError):
    """An unknown model id (HTTP 404)."""


class ModelLoadingError(WarmloadError):
    """The model is still loading and the server was told not to wait (HTTP 503)."""


@dataclass(slots=True)
class ModelEntry:
    id: str
    path: str
    engine: Any = None
    scheduler: Any = None
    task: asyncio.Task | None = None
    error: str | None = None
    active: int = 0  # requests using it now
    last_used: float = 0.0
    keep_alive: float = 300.0
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    nbytes: int = 0
    progress: float = 0.0  # fraction of the load done (the loader's byte count)
    rewarm: Any = None  # the background re-warm thread, while one runs
    residency: float | None = None  # fraction of its file resident at the last sample
    rewarms: int = 0  # background re-warms started for it
    last_rewarm: float | None = None  # time.monotonic() of the last one
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0})

    @property
    def state(self) -> str:
        if self.engine is not None:
            return "failed" if getattr(self.scheduler, "failed", False) else "ready"
        if self.task is not None and not self.task.done():
            return "loading"
        return "failed" if self.error else "unloaded"

    def expires_at(self) -> float | None:
        if self.engine is None or self.keep_alive < 0:
            return None
        return self.last_used + self.keep_alive


def discover_models(config: ServerConfig) -> dict[str, str]:
    """id -> path: the -m models in order, then every model file of --models-dir by stem."""
    models = {model_id: path for model_id, path in config.models}
    if config.models_dir:
        folder = Path(config.models_dir).expanduser()
        if not folder.is_dir():
            raise RequestError(f"--models-dir {folder} is not a directory", "models_dir")
        for path in sorted(folder.iterdir()):
            if path.suffix in MODEL_SUFFIXES or (path / "config.json").exists():
                models.setdefault(path.stem if path.is_file() else path.name, str(path))
    return models


class ModelCache:
    def __init__(self, config: ServerConfig, make_scheduler: Any, on_load: Any = None) -> None:
        self.config = config
        self.make_scheduler = make_scheduler
        self.on_load = on_load  # callback(seconds) after each successful load (metrics)
        self.entries = {
            model_id: ModelEntry(model_id, path, keep_alive=config.keep_alive_seconds)
            for model_id, path in discover_models(config).items()
        }
        self.aliases = dict(config.aliases)
        for alias, target in [*self.aliases.items(), ("fallback", config.fallback_model)]:
            if target is not None and target not in self.entries:
                raise RequestError(
                    f"{alias} names model {target!r}, which is not served "
                    f"(served: {', '.join(self.entries) or 'none'})",
                    "alias",
                )
        self.counters = {
            "hits": 0,
            "misses": 0,
            "loads": 0,
            "evictions": 0,
            "load_failures": 0,
            "rewarms": 0,
            "reloads": 0,
        }

    @property
    def default_id(self) -> str | None:
        return next(iter(self.entries), None)

    def entry(self, model_id: str | None) -> ModelEntry:
        """The entry for a request's model name: an id, an --alias, or (unknown names, with
        --fallback-model) the fallback; else 404."""
        model_id = model_id or self.default_id
        model_id = self.aliases.get(model_id, model_id) if model_id else model_id
        if model_id not in self.entries and self.config.fallback_model is not None:
            log.info("unknown model %r: answering with %s", model_id, self.config.fallback_model)
            model_id = self.config.fallback_model
        if model_id is None or model_id not in self.entries:
            known = ", ".join([*self.entries, *self.aliases]) or "none"
            raise ModelNotFoundError(f"model {model_id!r} not found; available: {known}", "model")
        return self.entries[model_id]

    def add_model(self, path: Path) -> str:
        """Serve a new model file (a finished pull) under its stem; its id."""
        model_id = path.stem if path.is_file() else path.name
        if model_id not in self.entries:
            self.entries[model_id] = ModelEntry(
                model_id, str(path), keep_alive=self.config.keep_alive_seconds
            )
        return model_id

    async def acquire(
        self, model_id: str | None, keep_alive: float | None = None, wait: bool = True
    ) -> ModelEntry:
        """The loaded entry for a request (loading it once if needed); pair with release()."""
        entry = self.entry(model_id)
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        if entry.engine is not None and getattr(entry.scheduler, "failed", False):
            log.error(
                "%s: its scheduler stopped (%s); reloading", entry.id, entry.scheduler.last_error
            )
            self.counters["reloads"] += 1
            self.unload(entry.id)
        if entry.engine is not None:
            self.counters["hits"] += 1
        else:
            self.counters["misses"] += 1
            task = self.start_load(entry)
            if not wait and not task.done():
                raise ModelLoadingError(f"model {entry.id!r} is loading; retry shortly")
            await asyncio.shield(task)
            if entry.engine is None:
                raise ModelLoadError(entry.id, RuntimeError(entry.error or "unknown error"))
        entry.active += 1
        entry.last_used = time.monotonic()
        entry.stats["requests"] += 1
        return entry

    def release(self, entry: ModelEntry) -> None:
        entry.active -= 1
        entry.last_used = time.monotonic()
        if entry.active == 0 and entry.keep_alive == 0:
            self.unload(entry.id)

    def start_load(self, entry: ModelEntry) -> asyncio.Task:
        """Single flight: concurrent callers share one load task."""
        if entry.task is None or (entry.task.done() and entry.engine is None):
            entry.error = None
            entry.task = asyncio.get_running_loop().create_task(self._load(entry))
        return entry.task

    async def _load(self, entry: ModelEntry) -> None:
        from warmload.engine import load_engine

        self._make_room(Path(entry.path))
        self.counters["loads"] += 1
        started = time.perf_counter()
        entry.progress = 0.0

        def progress(done: int, total: int) -> None:  # called on the loading thread
            entry.progress = done / total if total else 0.0

        options = {**_load_options(self.config), "progress": progress}
        try:
            engine = await asyncio.to_thread(load_engine, entry.path, **options)
        except Exception as exc:  # a failed load is that model's 500, not the server's end
            self.counters["load_failures"] += 1
            entry.error = str(exc) if isinstance(exc, WarmloadError) else f"internal error: {exc}"
            log.exception("loading %s failed", entry.id)
            return
        entry.engine = engine
        entry.scheduler = self.make_scheduler(engine, self.config)
        entry.load_seconds = time.perf_counter() - started
        entry.loaded_at = entry.last_used = time.monotonic()
        entry.nbytes = model_nbytes(engine, entry.scheduler)
        entry.progress = 1.0
        if self.on_load is not None:
            self.on_load(entry.load_seconds)
        log.info("loaded %s in %.2f s", entry.id, entry.load_seconds)

    def _make_room(self, path: Path) -> None:
        """Evict idle models, least recently used first, until the new one fits."""
        incoming = path.stat().st_size if path.is_file() else 0
        budget = self.config.memory_budget_bytes
        while True:
            loaded = [e for e in self.entries.values() if e.engine is not None]
            used = sum(e.nbytes for e in loaded)
            over_count = len(loaded) >= self.config.max_models
            over_budget = budget is not None and used + incoming > budget
            idle = sorted((e for e in loaded if e.active == 0), key=lambda e: e.last_used)
            if not (over_count or over_budget) or not idle:
                return
            self.unload(idle[0].id)
            self.counters["evictions"] += 1

    def unload(self, model_id: str) -> bool:
        entry = self.entry(model_id)
        if entry.engine is None:
            return False
        if entry.scheduler is not None:
            entry.scheduler.close()
        entry.engine.close()
        entry.engine = entry.scheduler = None
        release_freed_memory()
        entry.keep_alive = self.config.keep_alive_seconds  # a request's keep_alive lasts a load
        log.info("unloaded %s", entry.id)
        return True

    def unload_when_idle(self, model_id: str | None) -> ModelEntry:
        """Unload now, or (while requests use it) as soon as the last one is done."""
        entry = self.entry(model_id)
        entry.keep_alive = 0
        if entry.active == 0:
            self.unload(entry.id)
        return entry

    def sweep(self) -> None:
        """Unload models whose keep-alive ran out (called periodically)."""
        now = time.monotonic()
        for entry in self.entries.values():
            expires = entry.expires_at()
            if entry.active == 0 and expires is not None and expires <= now:
                self.unload(entry.id)

    def rewarm(
        self, threshold: float = REWARM_BELOW, min_interval: float = REWARM_MIN_INTERVAL
    ) -> list[str]:
        """Sample every loaded model's residency (mincore: cheap) and start a background
        warm-up of each idle one whose file the OS has partly evicted from the page cache
        (below `threshold`), at most once per `min_interval` seconds per model, so the next
        request does not pay for page faults; returns the ids being re-warmed."""
        from warmload.loader.warm import warm_in_background

        started = []
        now = time.monotonic()
        for entry in list(self.entries.values()):
            engine = entry.engine  # read once: a request may unload it meanwhile
            if engine is None:
                entry.residency = None
                continue
            try:
                entry.residency = resident = engine.residency()
            except (OSError, ValueError) as exc:  # mincore refused, or the file just closed
                log.debug("residency of %s: %s", entry.id, exc)
                continue
            busy = entry.rewarm is not None and entry.rewarm.is_alive()
            recent = entry.last_rewarm is not None and now - entry.last_rewarm < min_interval
            if entry.active or busy or recent or resident >= threshold:
                continue
            log.info("%s: %.0f%% of its file is resident; re-warming", entry.id, resident * 100)
            self.counters["rewarms"] += 1
            entry.rewarms += 1
            entry.last_rewarm = now
            entry.rewarm = warm_in_background(engine.checkpoint, "auto")
            started.append(entry.id)
        return started

    def residencies(self) -> dict[str, float]:
        """Each loaded model's last sampled residency, as /metrics labels."""
        return {
            f'model="{e.id}"': e.residency
            for e in self.entries.values()
            if e.engine is not None and e.residency is not None
        }

    def close(self) -> None:
        for model_id in list(self.entries):
            self.unload(model_id)


def model_nbytes(engine: Any, scheduler: Any = None) -> int:
    """Memory a loaded model holds: its weights' bytes plus its batch's preallocated KV cache."""
    weights = sum(t.nbytes for t in engine.checkpoint.tensors.values())
    return weights + int(getattr(scheduler, "kv_cache_nbytes", 0))


def _load_options(config: ServerConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config.load)
