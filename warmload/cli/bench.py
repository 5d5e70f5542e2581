"""`warmload bench`: llama-bench-style table of load, ttft, pp and tg, with peers side by side."""

from __future__ import annotations

import argparse
import json

from warmload.cli.render import format_bytes, print_table

PEERS = {"llama-cpp": "llama.cpp", "transformers": "transformers"}


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure load, TTFT, prompt and decode speed")
    p.add_argument("-m", "--model", action="append", default=None, help="repeatable")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-t", "--threads", type=int_list, default=[2], help="e.g. 1,2")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--load", action="store_true", help="time the load in every load mode")
    p.add_argument("-o", "--output", choices=("md", "json", "jsonl"), default="md")
    p.add_argument(
        "--compare", default="", help="comma-separated peers: " + ", ".join(sorted(PEERS))
    )
    p.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from warmload.bench import run_bench
    from warmload.catalog import resolve_model_path
    from warmload.errors import RequestError

    models = [resolve_model_path(m) for m in (args.model or [None])]
    backends = ["warmload"]
    for peer in filter(None, args.compare.split(",")):
        if peer not in PEERS:
            raise RequestError(f"unknown peer {peer!r}; known: {', '.join(sorted(PEERS))}")
        backends.append(PEERS[peer])
    modes = ("mmap", "memory", "read") if args.load else ("mmap",)

    def on_row(row) -> None:
        if args.output == "jsonl":
            print(json.dumps(row.as_dict()), flush=True)

    rows = run_bench(
        models, backends, args.threads, args.n_prompt, args.n_gen, args.repetitions, modes, on_row
    )
    if args.output == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif args.output == "md":
        print_table(
            ("model", "size", "params", "backend", "threads", "test", "value", "min", "median"),
            [
                (
                    r.model,
                    format_bytes(r.size_bytes),
                    f"{r.params / 1e6:.0f} M",
                    r.backend,
                    r.threads,
                    r.test,
                    f"{r.mean:.3f} ± {r.sd:.3f} {r.unit}",
                    f"{min(r.values):.3f}",
                    f"{r.as_dict()['median']:.3f}",
                )
                for r in rows
            ],
        )
    return 0
