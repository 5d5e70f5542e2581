"""`warmload bench`: llama-bench-style table of load, ttft, pp and tg, with peers side by side."""

from __future__ import annotations

import argparse
import json

from warmload.cli.render import format_bytes, print_table

PEERS = {
    "llama-cpp": "llama.cpp",
    "llama-cpp-avx2": "llama.cpp-avx2",  # built for AVX2 only: make bench-peers
    "transformers": "transformers",
}


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure load, TTFT, prompt and decode speed")
    p.add_argument("-m", "--model", action="append", default=None, help="repeatable")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument(
        "-t", "--threads", type=int_list, default=None, help="e.g. 1,2 (default: physical cores)"
    )
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument(
        "--load",
        action="store_true",
        help="only time loads: every load mode next to a plain read of the file",
    )
    p.add_argument("--modes", default="mmap,memory,read", help="with --load: load modes")
    p.add_argument(
        "--cold",
        action="store_true",
        help="with --load: also evict the file first (use a private copy of it)",
    )
    p.add_argument("--lazy", action="store_true", help="with --load: lazy loading")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="with --load: also time faulting in a file-sized fresh buffer, and a plain read "
        "into one (what any copy of the file costs here)",
    )
    p.add_argument(
        "--warmups",
        default="",
        help="with --load: also time these warm-up modes, e.g. populate,read",
    )
    p.add_argument(
        "--source-only",
        action="store_true",
        help="with --load: only deliver the tensors' bytes (no model, no transform)",
    )
    p.add_argument(
        "--first-answer", action="store_true", help="with --load: also time one forward pass"
    )
    p.add_argument(
        "--tune-threads",
        action="store_true",
        help="measure decode speed at 1..N threads (or -t), store the fastest for this machine "
        "and model size; later runs without -t use it",
    )
    p.add_argument(
        "--variants",
        default="",
        help="warmload's kernel variants to run, e.g. avx2,avx512, or 'all' (each this CPU "
        "runs); default: the one dispatch picks",
    )
    p.add_argument("-o", "--output", choices=("md", "json", "jsonl"), default="md")
    p.add_argument(
        "--quantize", metavar="TYPE", default=None, help="bench the models quantized at load"
    )
    p.add_argument(
        "--compare", default="", help="comma-separated peers: " + ", ".join(sorted(PEERS))
    )
    p.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from warmload.bench import run_bench
    from warmload.catalog import resolve_model_path
    from warmload.errors import RequestError
    from warmload.threads import physical_cores

    models = [resolve_model_path(m) for m in (args.model or [None])]
    if args.quantize:  # the cached quantized files (made now on a miss)
        from warmload.loader.quantize_at_load import prepare_quantized

        models = [prepare_quantized(m, args.quantize).path for m in models]
    if args.tune_threads:
        return tune_threads(args, models)
    threads = args.threads or [physical_cores()]
    backends = warmload_backends(args.variants)
    for peer in filter(None, args.compare.split(",")):
        if peer not in PEERS:
            raise RequestError(f"unknown peer {peer!r}; known: {', '.join(sorted(PEERS))}")
        backends.append(PEERS[peer])
    if args.load:
        return run_load_command(args, models)
    modes = ("mmap",)

    def on_row(row) -> None:
        if args.output == "jsonl":
            print(json.dumps(row.as_dict()), flush=True)

    rows = run_bench(
        models, backends, threads, args.n_prompt, args.n_gen, args.repetitions, modes, on_row
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


def warmload_backends(variants: str) -> list[str]:
    """ "warmload" (the variant dispatch picks), or "warmload[v]" for each variant asked for
    (UnsupportedError for one not built or not runnable here)."""
    from warmload.kernels import dispatch

    if not variants:
        return ["warmload"]
    names = dispatch.runnable_variants() if variants == "all" else variants.split(",")
    for name in names:
        dispatch.check_runnable(name)
    return [f"warmload[{name}]" for name in names]


def tune_threads(args: argparse.Namespace, models: list) -> int:
    """Decode tokens/s of warmload at each thread count; the fastest is stored per model size."""
    from warmload.bench import run_bench
    from warmload.threads import record_tuned_threads, tuning_file, usable_cpus

    counts = args.threads or list(range(1, len(usable_cpus()) + 1))
    for model in models:
        rows = run_bench([model], ["warmload"], counts, 16, args.n_gen, args.repetitions)
        speeds = {r.threads: r.mean for r in rows if r.test.startswith("tg")}
        best = record_tuned_threads(model.stat().st_size, speeds)
        measured = ", ".join(f"{n}: {v:.1f} t/s" for n, v in sorted(speeds.items()))
        print(f"{model.name}: decode {measured} -> {best} threads (stored in {tuning_file()})")
    return 0


def run_load_command(args: argparse.Namespace, models: list) -> int:
    from warmload.bench.load import run_load_bench
    from warmload.config import LOAD_MODES, WARMUP_MODES
    from warmload.errors import RequestError

    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in LOAD_MODES]
    if bad:
        raise RequestError(f"unknown load mode {bad[0]!r}; known: {', '.join(LOAD_MODES)}")
    warmups = [w for w in args.warmups.split(",") if w]
    bad = [w for w in warmups if w not in WARMUP_MODES]
    if bad:
        raise RequestError(f"unknown warm-up mode {bad[0]!r}; known: {', '.join(WARMUP_MODES)}")
    caches = ("warm", "cold") if args.cold else ("warm",)

    def on_row(row) -> None:
        if args.output == "jsonl":
            print(json.dumps(row.as_dict()), flush=True)

    rows = run_load_bench(
        models,
        modes,
        caches,
        args.lazy,
        args.first_answer,
        args.repetitions,
        args.source_only,
        on_row,
        warmups,
        args.fresh,
    )
    if args.output == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif args.output == "md":
        print_table(*load_table(rows))
    return 0


def load_table(rows: list) -> tuple[tuple[str, ...], list[tuple]]:
    """Header and rows: each case's median time to ready, its ratio to the plain read of the
    same file in the same cache state, GB/s, first answer and peak RSS."""
    base = {(r.model, r.cache): r.median_s for r in rows if r.case == "plain read"}
    table = []
    for r in rows:
        if r.skipped:
            table.append(
                (
                    r.model,
                    format_bytes(r.size_bytes),
                    r.case,
                    r.cache,
                    "skipped: " + r.skipped,
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        first = f"{sorted(r.first_s)[len(r.first_s) // 2]:.3f} s" if r.first_s else ""
        table.append(
            (
                r.model,
                format_bytes(r.size_bytes),
                r.case,
                r.cache,
                f"{r.median_s:.3f} s",
                f"{min(r.ready_s):.3f} s",
                f"{r.gb_per_s:.2f}",
                f"{r.median_s / base[(r.model, r.cache)]:.2f}x",
                first,
                format_bytes(r.peak_rss_bytes),
            )
        )
    header = (
        "model",
        "size",
        "case",
        "cache",
        "ready",
        "min",
        "GB/s",
        "vs read",
        "first answer",
        "peak RSS",
    )
    return header, table
