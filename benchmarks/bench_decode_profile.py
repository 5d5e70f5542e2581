"""Where one decode step's time goes: the layers (one C call), the output product, attention,
RMSNorm and the rest (Python, module calls, sampling-free torch ops), per packaged model.

    .venv/bin/python benchmarks/bench_decode_profile.py [--threads 2] [--steps 64] [--runs 5]

Runs on the kernel variant dispatch picks (WARMLOAD_KERNELS=avx2 .. forces one); every row
names it.

Each kernel entry point of warmload.kernels is wrapped with a wall-clock timer; the step time is
the model's forward + logits of one token at a context of 64-128 tokens. Prints JSON lines, then
a table of per-step milliseconds (min over runs of the per-run mean).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

import warmload
from warmload import kernels
from warmload.cli.render import print_table

TIMED = ("plan_step", "quantized_matmul", "attention", "rms_norm")


def instrument() -> dict[str, float]:
    """Wrap the kernel entry points; returns the dict their seconds accumulate in."""
    spent: dict[str, float] = defaultdict(float)
    for name in TIMED:
        real = getattr(kernels, name)

        def timed(*args, _real=real, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - started

        setattr(kernels, name, timed)
    return spent


def profile(model_name: str, threads: int, steps: int, runs: int, spent: dict) -> dict:
    engine = warmload.load(model_name, threads=threads, ctx=steps + 128)
    model = engine.model
    prompt = engine.tokenizer.encode(" ".join(["warm"] * 64))[:64]
    best: dict[str, float] | None = None
    with torch.inference_mode():
        for _ in range(runs):
            cache = model.new_cache(len(prompt) + steps + 1)
            model(torch.tensor([prompt]), cache, 0)
            token = torch.tensor([[prompt[-1]]])
            spent.clear()
            started = time.perf_counter()
            for i in range(steps):
                model.compute_logits(model(token, cache, len(prompt) + i))
            total = (time.perf_counter() - started) / steps
            run = {name: spent[name] / steps for name in TIMED}
            run["step"] = total
            run["rest"] = total - sum(run[name] for name in TIMED)
            if best is None or run["step"] < best["step"]:
                best = run
    engine.close()
    assert best is not None
    return {"model": model_name, "threads": threads, **{k: v * 1e3 for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not kernels.AVAILABLE:
        raise SystemExit(f"no kernel variant runs here ({kernels.VARIANT_REASON}): make install")
    spent = instrument()
    results = []
    for name in args.models.split(","):
        result = profile(name, args.threads, args.steps, args.runs, spent)
        result["variant"] = kernels.VARIANT
        print(json.dumps(result), flush=True)
        results.append(result)
    columns = ("step", "plan_step", "quantized_matmul", "attention", "rms_norm", "rest")
    print_table(
        ("model", "variant", "threads", *(f"{c} ms" for c in columns), "tokens/s"),
        [
            (
                r["model"],
                r["variant"],
                r["threads"],
                *(f"{r[c]:.2f}" for c in columns),
                f"{1e3 / r['step']:.1f}",
            )
            for r in results
        ],
    )


if __name__ == "__main__":
    main()
