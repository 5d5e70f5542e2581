"""One batched decode step of the model alone: B rows, each at its own position, through
forward + logits, for B = 1, 4, 8 (what `warmload serve` runs per step for B streams, without the
server's sampling, detokenization and HTTP).

    .venv/bin/python benchmarks/bench_batch_step.py [--models smollm2,gemma3-270m]
        [--rows 1,4,8] [--threads 2] [--steps 20] [--runs 3]

Rows start at positions 40, 41, ... (a short prompt's worth of cache); tokens/s = B / step
seconds, the median step of each run, min and median over runs. Prints JSON lines, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import warmload
from warmload.cli.render import print_table


def step_seconds(engine, rows: int, steps: int) -> float:
    """The median seconds of `steps` decode steps of `rows` rows at their own positions."""
    model = engine.model
    cache = model.new_cache(256, rows)
    tokens = torch.full((rows, 1), 42, dtype=torch.long)
    positions = torch.arange(40, 40 + rows, dtype=torch.long)
    times = []
    with torch.no_grad():
        for step in range(steps + 2):
            started = time.perf_counter()
            hidden = model(tokens, cache, positions + step)
            model.compute_logits(hidden)
            times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    table = []
    for name in args.models.split(","):
        engine = warmload.load(name, threads=args.threads)
        single = None
        for rows in (int(r) for r in args.rows.split(",")):
            rates = [rows / step_seconds(engine, rows, args.steps) for _ in range(args.runs)]
            median = statistics.median(rates)
            single = single or median
            record = {"model": name, "rows": rows, "tok_s_min": min(rates), "tok_s_median": median}
            print(json.dumps(record), flush=True)
            table.append(
                [name, rows, f"{min(rates):.1f}", f"{median:.1f}", f"{median / single:.2f}x"]
            )
        engine.close()
    print_table(["model", "rows", "tok/s min", "tok/s median", "vs first"], table)


if __name__ == "__main__":
    main()
