"""Prompt cache across processes: TTFT of a new conversation with a ~1,000-token system prompt
in a fresh process, without the prompt cache ("off"), and with it after another process saved
the system prompt's KV state ("hit"). Each measurement is its own subprocess (load, one chat
turn, 1 new token, greedy); the ratio hit/off is the issue's target (<= 0.1).

    .venv/bin/python benchmarks/bench_prompt_cache.py [--model smollm2] [--runs 3]

The cache folder is a fresh temporary folder; the "fill" run writes the entry (its TTFT is the
uncached one plus the snapshot). Prints one JSON line per run and the medians' ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

SENTENCE = (
    "When a customer asks about a product, give its name, its price in euros, whether it is "
    "in stock at the Lyon warehouse, and one sentence on what it is good for. "
)

CHILD = r"""
import json, sys, time
from warmload.engine import load_engine
model, folder, words, question = sys.argv[1:5]
engine = load_engine(model, prompt_cache=folder)
system = " ".join([SENTENCE] * int(words))
messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
start = time.perf_counter()
done = engine.chat(messages, max_tokens=1, temperature=0)
ttft = time.perf_counter() - start
engine.close()
print(json.dumps({"ttft": ttft, "prompt_tokens": done.timings.prompt_tokens,
                  "cached_tokens": done.timings.cached_tokens}))
"""


def run_child(model: str, folder: str, repeats: int, question: str) -> dict:
    code = f"SENTENCE = {SENTENCE!r}\n" + CHILD
    out = subprocess.run(
        [sys.executable, "-c", code, model, folder, str(repeats), question],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=28, help="sentences (~36 tokens each)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"off": [], "hit": []}
    with tempfile.TemporaryDirectory() as folder:
        fill = run_child(args.model, folder, args.repeats, "What is a torque wrench?")
        print(json.dumps({"case": "fill", **fill}))
        for i in range(args.runs):  # alternate, so drift hits both cases alike
            for case in ("off", "hit"):
                question = f"Do you sell drill bits, number {i}?"
                where = "off" if case == "off" else folder
                started = time.perf_counter()
                row = run_child(args.model, where, args.repeats, question)
                row["process_seconds"] = time.perf_counter() - started
                print(json.dumps({"case": case, **row}))
                results[case].append(row["ttft"])
    off, hit = statistics.median(results["off"]), statistics.median(results["hit"])
    print(f"model {args.model}: prompt {fill['prompt_tokens']} tokens")
    print(f"TTFT median off {off * 1000:.0f} ms, hit {hit * 1000:.0f} ms, ratio {hit / off:.3f}")


if __name__ == "__main__":
    main()
