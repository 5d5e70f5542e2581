"""Bench worker: `python -m warmload.bench.worker SPEC_JSON` measures one backend on one model
and prints one JSON line: {"tests": {name: [unit, [values...]]}} (and for warmload "variant":
the kernel variant it ran)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from warmload.bench import TTFT_TOKENS, BenchSpec, split_backend
from warmload.bench.runners import RUNNERS
from warmload.memstats import peak_rss_bytes


def measure(spec: BenchSpec) -> dict[str, tuple[str, list[float]]]:
    runner_cls = RUNNERS[split_backend(spec.backend)[0]]
    tests: dict[str, tuple[str, list[float]]] = {}
    runner = None
    for mode in spec.load_modes:
        seconds = []
        for _ in range(spec.repetitions):
            if runner is not None:
                runner.close()
            runner = runner_cls(Path(spec.model), spec.threads, spec.ctx, mode)
            seconds.append(runner.load())
        tests[f"load {mode}"] = ("s", seconds)
    tests["rss after load"] = ("MiB", [peak_rss_bytes() / 2**20])
    ids = list(spec.prompt_ids)
    runner.prefill(ids[:TTFT_TOKENS])  # warm-up: first-call allocations are not the steady state
    ttft = [runner.prefill(ids[:TTFT_TOKENS]) for _ in range(spec.repetitions)]
    tests[f"ttft{TTFT_TOKENS}"] = ("s", ttft)
    if spec.n_prompt:
        runner.prefill(ids[: spec.n_prompt])  # warm-up at this size too (scratch, GEMM plans)
        pp = [spec.n_prompt / runner.prefill(ids[: spec.n_prompt]) for _ in range(spec.repetitions)]
        tests[f"pp{spec.n_prompt}"] = ("t/s", pp)
    if spec.n_gen:
        tg = [spec.n_gen / runner.decode(ids[:16], spec.n_gen) for _ in range(spec.repetitions)]
        tests[f"tg{spec.n_gen}"] = ("t/s", tg)
    tests["peak rss"] = ("MiB", [peak_rss_bytes() / 2**20])
    runner.close()
    return tests


def main() -> int:
    data = json.loads(sys.argv[1])
    data["prompt_ids"] = tuple(data["prompt_ids"])
    data["load_modes"] = tuple(data["load_modes"])
    spec = BenchSpec(**data)
    result: dict = {"tests": measure(spec)}
    if split_backend(spec.backend)[0] == "warmload":
        from warmload import kernels

        result["variant"] = kernels.VARIANT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
