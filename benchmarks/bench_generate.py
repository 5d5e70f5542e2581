"""Generation benchmark: load time, TTFT (20-token prompt), prompt processing (pp256) and
decode (tg64) tokens/s, and peak RSS, for warmload, llama.cpp (llama-cpp-python) and
transformers side by side in one run, on both packaged models, 2 threads.

    .venv/bin/python benchmarks/bench_generate.py [--runs 3] [--peers llama.cpp,transformers]
        [--variants avx2,avx512 | all]

Each backend runs in its own worker process (warmload.bench); prints JSON lines, then a table.
warmload runs once per kernel variant asked for (--variants; default the one dispatch picks),
each row naming its variant. Peers are skipped with a note when not installed (`make
bench-peers`); llama.cpp-avx2 is llama-cpp-python built for AVX2 only (.peers/llama-avx2),
the avx2 variant's peer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

from warmload.bench import peer_dir, run_bench
from warmload.catalog import resolve_model_path
from warmload.cli.bench import warmload_backends
from warmload.cli.render import print_table

PEER_MODULES = {
    "llama.cpp": "llama_cpp",
    "llama.cpp-avx2": "llama_cpp",
    "transformers": "transformers",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--peers", default="llama.cpp,transformers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompt", type=int, default=256)
    parser.add_argument("--n-gen", type=int, default=64)
    parser.add_argument("--variants", default="", help="kernel variants, e.g. avx2,avx512 or all")
    args = parser.parse_args()
    backends = warmload_backends(args.variants)
    for peer in filter(None, args.peers.split(",")):
        folder = peer_dir(peer)
        if folder is not None and not folder.is_dir():
            print(json.dumps({"skipped": peer, "reason": f"{folder} not built (make bench-peers)"}))
        elif folder is None and importlib.util.find_spec(PEER_MODULES[peer]) is None:
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
