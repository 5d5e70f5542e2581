"""Prometheus text-format metrics (exposition format 0.0.4), without a client library:
counters, gauges read at scrape time, and histograms with fixed buckets."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        lines += [f"{self.name}_sum {self.total}", f"{self.name}_count {self.n}"]
        return lines


class Metrics:
    """The server's metrics; `gauges` are callables read at scrape time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, str], float] = {}
        self.counter_help: dict[str, str] = {}
        self.histograms = {
            "ttft": Histogram("warmload_time_to_first_token_seconds", "Time to first token."),
            "token": Histogram(
                "warmload_time_per_output_token_seconds", "Time per output token after the first."
            ),
            "load": Histogram("warmload_model_load_seconds", "Model load time."),
        }
        self.gauges: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {}

    def inc(self, name: str, help: str, value: float = 1.0, labels: str = "") -> None:
        with self.lock:
            self.counter_help[name] = help
            self.counters[(name, labels)] = self.counters.get((name, labels), 0.0) + value

    def observe(self, which: str, value: float) -> None:
        with self.lock:
            self.histograms[which].observe(value)

    def gauge(self, name: str, help: str, read: Callable[[], dict[str, float]]) -> None:
        """read() -> {label string (e.g. 'model="x"') or "": value}."""
        self.gauges[name] = (help, read)

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for name, help in sorted(self.counter_help.items()):
                lines += [f"# HELP {name} {help}", f"# TYPE {name} counter"]
                for (n, labels), value in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
            for hist in self.histograms.values():
                lines += hist.render()
        for name, (help, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
            for labels, value in sorted(read().items()):
                lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
        return "\n".join(lines) + "\n"
