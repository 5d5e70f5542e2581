"""Generation benchmark: load time, TTFT (20-token prompt), prompt processing (pp256) and
decode (tg64) tokens/s, and peak RSS, for warmload, llama.cpp (llama-cpp-python) and
transformers side by side in one run, on both packaged models, 2 threads.

    .venv/bin/python benchmarks/bench_generate.py [--runs 3] [--peers llama.cpp,transformers]

Each backend runs in its own worker process (warmload.bench); prints JSON lines, then a table.
Peers are skipped with a note when not installed (`make bench-peers`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json

from warmload.bench import run_bench
from warmload.catalog import resolve_model_path
from warmload.cli.render import print_table

PEER_MODULES = {"llama.cpp": "llama_cpp", "transformers": "transformers"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--peers", default="llama.cpp,transformers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompt", type=int, default=256)
    parser.add_argument("--n-gen", type=int, default=64)
    args = parser.parse_args()
    backends = ["warmload"]
    for peer in filter(None, args.peers.split(",")):
        if importlib.util.find_spec(PEER_MODULES[peer]) is None:
            print(json.dumps({"skipped": peer, "reason": "not installed (make bench-peers)"}))
        else:
            backends.append(peer)
    models = [resolve_model_path(m) for m in args.models.split(",")]
    rows = run_bench(
        models,
        backends,
        [args.threads],
        args.n_prompt,
        args.n_gen,
        args.runs,
        on_row=lambda r: print(json.dumps(r.as_dict()), flush=True),
    )
    print()
    print_table(
        ("model", "backend", "test", "min", "median", "unit"),
        [
            (
                r.model,
                r.backend,
                r.test,
                f"{min(r.values):.3f}",
                f"{r.as_dict()['median']:.3f}",
                r.unit,
            )
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()
