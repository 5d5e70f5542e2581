"""LoadStats: measured seconds and bytes per load stage, for --verbose, the server and bench.

Stages (in pipeline order): open, config, build, plan, source, transform, transfer, assign,
prepare, verify. `wall_seconds` is the measured wall time of the whole load (the stages plus
loop overhead); stage times are sums over tensors, so with parallel workers (loader/pipeline.py)
they add up the workers' time and may exceed the wall time. Weights loaded later by lazy
loading (loader/lazy.py) keep adding to the same LoadStats.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StageStats:
    seconds: float = 0.0
    nbytes: int = 0  # bytes that went into the stage (0 where it handles no tensor data)
    count: int = 0


@dataclass(slots=True)
class LoadStats:
    stages: dict[str, StageStats] = field(default_factory=dict)
    wall_seconds: float = 0.0
    n_tensors: int = 0
    source_nbytes: int = 0  # checkpoint bytes read
    param_nbytes: int = 0  # bytes of the model's parameters after transforms

    def add(self, stage: str, seconds: float, nbytes: int = 0) -> None:
        s = self.stages.setdefault(stage, StageStats())
        s.seconds += seconds
        s.nbytes += nbytes
        s.count += 1

    def merge(self, other: LoadStats) -> None:
        """Add another LoadStats' stages and counters (one worker's tensor) into this one."""
        for name, s in other.stages.items():
            mine = self.stages.setdefault(name, StageStats())
            mine.seconds += s.seconds
            mine.nbytes += s.nbytes
            mine.count += s.count
        self.n_tensors += other.n_tensors
        self.source_nbytes += other.source_nbytes
        self.param_nbytes += other.param_nbytes

    @contextmanager
    def timed(self, stage: str, nbytes: int = 0) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started, nbytes)

    @property
    def total_seconds(self) -> float:
        """The wall time if measured, else the sum of the stages."""
        return self.wall_seconds or sum(s.seconds for s in self.stages.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_seconds": self.total_seconds,
            "n_tensors": self.n_tensors,
            "source_nbytes": self.source_nbytes,
            "param_nbytes": self.param_nbytes,
            "stages": {
                name: {"seconds": s.seconds, "nbytes": s.nbytes, "count": s.count}
                for name, s in self.stages.items()
            },
        }

    def summary(self) -> str:
        """One line: total, then each stage's time (and throughput where it moved bytes)."""
        parts = []
        for name, s in self.stages.items():
            rate = f" {s.nbytes / s.seconds / 1e9:.2f} GB/s" if s.nbytes and s.seconds else ""
            parts.append(f"{name} {s.seconds * 1e3:.1f} ms{rate}")
        return (
            f"loaded {self.n_tensors} tensors ({self.source_nbytes / 1e6:.1f} MB -> "
            f"{self.param_nbytes / 1e6:.1f} MB) in {self.total_seconds:.3f} s: " + ", ".join(parts)
        )
