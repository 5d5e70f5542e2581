"""The server's continuous batching without the server: N requests added at once to one
BatchRunner (warmload/batch.py), stepped until idle, in process. Splits the wall time into the
forward passes that carry prompt tokens and those that only decode, and counts the steps (what
`warmload serve` runs for N concurrent streams, without HTTP, JSON and the event loop).

    .venv/bin/python benchmarks/bench_batch_runner.py [--models smollm2,gemma3-270m]
        [--streams 1,8] [--max-tokens 48] [--threads 2] [--runs 3]

The prompts are bench_server.py's (distinct, 6-12 tokens), greedy; tokens/s = generated tokens
/ wall. One warm-up run per model; min and median over runs. Prints JSON lines, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench_server import PROMPTS

import warmload
from warmload.batch import BatchRequest, BatchRunner
from warmload.cli.render import print_table
from warmload.engine import Chunk, generation_config


def run_once(engine, runner: BatchRunner, streams: int, max_tokens: int) -> dict:
    """Wall, prefill and decode seconds, steps and generated tokens of one batch."""
    spent = {"prompt": 0.0, "decode": 0.0}
    passes = ("_prefill_chunk", "_decode", "_ragged_pass")

    def kind(name: str, args: tuple) -> str:  # a ragged pass with chunks carries prompt tokens
        return (
            "decode" if name == "_decode" or (name == "_ragged_pass" and not args[1]) else "prompt"
        )

    for name in passes:
        inner = getattr(BatchRunner, name)

        def timed(*args, inner=inner, name=name):
            started = time.perf_counter()
            inner(runner, *args)
            spent[kind(name, args)] += time.perf_counter() - started

        setattr(runner, name, timed)
    tokens = [0]

    def emit(event) -> None:
        if isinstance(event, Chunk) and event.token_id is not None:
            tokens[0] += 1

    cfg = generation_config({"max_tokens": max_tokens, "temperature": 0})
    for i in range(streams):
        runner.add(BatchRequest(engine.tokenizer.encode(PROMPTS[i % len(PROMPTS)]), cfg, emit))
    steps, started = 0, time.perf_counter()
    while not runner.idle:
        runner.step()
        steps += 1
    wall = time.perf_counter() - started
    for name in passes:
        del runner.__dict__[name]
    return {
        "wall_s": wall,
        "prompt_passes_s": spent["prompt"],
        "decode_passes_s": spent["decode"],
        "steps": steps,
        "tok_s": tokens[0] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    table = []
    for name in args.models.split(","):
        engine = warmload.load(name, threads=args.threads)
        runner = BatchRunner(engine, max_batch=max(int(s) for s in args.streams.split(",")))
        run_once(engine, runner, 1, 8)  # warm-up
        single = None
        for streams in (int(s) for s in args.streams.split(",")):
            runs = [run_once(engine, runner, streams, args.max_tokens) for _ in range(args.runs)]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            single = single or median["tok_s"]
            record = {"model": name, "streams": streams, **median}
            print(json.dumps(record), flush=True)
            table.append(
                [
                    name,
                    streams,
                    f"{min(r['tok_s'] for r in runs):.1f}",
                    f"{median['tok_s']:.1f}",
                    f"{median['tok_s'] / single:.2f}x",
                    f"{median['wall_s']:.3f}",
                    f"{median['prompt_passes_s']:.3f}",
                    f"{median['decode_passes_s']:.3f}",
                    int(median["steps"]),
                ]
            )
        runner.close()
        engine.close()
    print_table(
        [
            "model",
            "streams",
            "tok/s min",
            "tok/s median",
            "vs first",
            "wall s",
            "prompt passes s",
            "decode passes s",
            "steps",
        ],
        table,
    )


if __name__ == "__main__":
    main()
