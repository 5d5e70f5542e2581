"""`warmload run` and `warmload chat`: stream text from a model, llama.cpp-style flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from warmload.cli.progress import delayed_progress_bar
from warmload.cli.render import format_bytes
from warmload.config import WARMUP_MODES, GenerationConfig

DEFAULTS = GenerationConfig()


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Flags that say which model and how to load it (shared with serve and bench)."""
    p.add_argument(
        "-m", "--model", default=None, help="model path or packaged name (default: smollm2)"
    )
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=None, help="context size")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--load-mode", choices=("mmap", "memory", "read"), default=None)
    p.add_argument("--mmap", dest="mmap", action="store_true", default=None, help="map the file")
    p.add_argument("--no-mmap", dest="mmap", action="store_false", help="read it into memory")
    p.add_argument("--mlock", action="store_true", help="lock the weights in RAM")
    p.add_argument(
        "-ngl",
        "--n-gpu-layers",
        dest="n_gpu_layers",
        type=int,
        default=0,
        help="accepted for llama.cpp compatibility; ignored with a warning (no GPU offload)",
    )
    p.add_argument("--verbose", action="store_true", help="log load stages")
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="neither read nor write warmload's caches (tokenizer merges, tuned threads)",
    )
    p.add_argument(
        "--warmup",
        choices=WARMUP_MODES,
        default="auto",
        help="pre-fault the weights' pages (in the background unless --warmup-sync; "
        "default: auto)",
    )
    p.add_argument("--warmup-sync", action="store_true", help="warm up before the model is ready")
    p.add_argument("--lazy", action="store_true", help="load each layer on its first use")
    p.add_argument(
        "--quantize",
        metavar="TYPE",
        default=None,
        help="quantize an F32/F16/BF16 model at load (Q8_0, Q4_K_M, ...); cached for next time",
    )
    p.add_argument(
        "--check-tensors",
        action="store_true",
        help="scan the weights and block scales for NaN/Inf before running (one pass)",
    )
    p.add_argument(
        "--prompt-cache",
        default="auto",
        metavar="DIR|off",
        help="save and reuse prompt prefixes' KV state on disk (default: under the cache dir)",
    )
    p.add_argument("--prompt-cache-max-gb", type=float, default=2.0, help="prompt cache bound")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    mode = args.load_mode or ("memory" if args.mmap is False else "mmap")
    options: dict[str, Any] = {"load_mode": mode, "mlock": args.mlock}
    if not args.use_cache:
        options["use_cache"] = False
    for name in ("warmup", "warmup_sync", "lazy", "check_tensors"):
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    if getattr(args, "quantize", None):  # checked now: serve loads models later
        from warmload.loader.quantize_at_load import quantize_type

        options["quantize"] = quantize_type(args.quantize)
    if args.prompt_cache != "auto":
        options["prompt_cache"] = args.prompt_cache
    if args.prompt_cache_max_gb != 2.0:
        options["prompt_cache_max_gb"] = args.prompt_cache_max_gb
    if args.ctx is not None:
        options["ctx"] = args.ctx
    if args.threads is not None:
        options["threads"] = args.threads
    if args.n_gpu_layers:
        warn_no_gpu_layers(args.n_gpu_layers)
    return options


_warned_gpu_layers = False


def warn_no_gpu_layers(n: int) -> None:
    """-ngl is llama.cpp's flag; warmload has no GPU layer offload: say so, once a process."""
    global _warned_gpu_layers
    if not _warned_gpu_layers:
        _warned_gpu_layers = True
        print(
            f"warning: -ngl {n} ignored: warmload has no GPU backend for layer offload; "
            "every layer runs on the CPU (see `warmload info`)",
            file=sys.stderr,
        )


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", dest="max_tokens", type=int, default=DEFAULTS.max_tokens)
    p.add_argument("-s", "--seed", type=int, default=None)
    p.add_argument("--temp", dest="temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    p.add_argument("--min-p", type=float, default=DEFAULTS.min_p)
    p.add_argument("--repeat-penalty", type=float, default=DEFAULTS.repeat_penalty)
    p.add_argument("--repeat-last-n", type=int, default=DEFAULTS.repeat_last_n)
    p.add_argument("--presence-penalty", type=float, default=DEFAULTS.presence_penalty)
    p.add_argument("--frequency-penalty", type=float, default=DEFAULTS.frequency_penalty)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print timings and memory after")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "max_tokens",
        "seed",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
    )
    options = {name: getattr(args, name) for name in names}
    options["max_tokens"] = options["max_tokens"] if options["max_tokens"] >= 0 else 1 << 30
    options["stop"] = tuple(args.stop)
    return options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="generate text from a prompt")
    add_model_flags(run)
    add_sampling_flags(run)
    run.add_argument("-p", "--prompt", default=None)
    run.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    run.add_argument("-i", "--interactive", action="store_true", help="chat after the prompt")
    run.add_argument("--raw", action="store_true", help="no chat template around -p")
    run.set_defaults(handler=run_generate)
    chat = subparsers.add_parser("chat", help="interactive multi-turn chat")
    add_model_flags(chat)
    add_sampling_flags(chat)
    chat.add_argument("-sys", "--system", default=None, help="system prompt")
    chat.set_defaults(handler=run_chat)


def run_generate(args: argparse.Namespace) -> int:
    from warmload.engine import load_engine

    prompt = args.prompt
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    with delayed_progress_bar("load") as update:
        engine = load_engine(args.model, progress=update, **load_options(args))
    if args.interactive:
        return chat_loop(engine, args, first=prompt)
    if prompt is None:
        prompt = sys.stdin.read() if not sys.stdin.isatty() else ""
    if args.raw:
        pieces = engine.stream_chunks(prompt, **sampling_options(args))
    else:
        messages = [{"role": "user", "content": prompt}]
        pieces = engine.stream_chunks(engine.chat_prompt(messages), **sampling_options(args))
    completion = print_stream(pieces)
    print()
    if args.stats:
        print_stats(engine, completion)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from warmload.engine import load_engine

    with delayed_progress_bar("load") as update:
        engine = load_engine(args.model, progress=update, **load_options(args))
    return chat_loop(engine, args, first=None)


def chat_loop(engine: Any, args: argparse.Namespace, first: str | None) -> int:
    """Multi-turn chat: /bye quits, /clear forgets. The engine's KV cache carries the history,
    so each turn prefills only its own new tokens."""
    system = getattr(args, "system", None)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    pending = [first] if first else []
    while True:
        if pending:
            line = pending.pop()
        else:
            try:
                line = input(">>> ") if interactive else sys.stdin.readline()
            except EOFError:
                return 0
            if not interactive and line == "":
                return 0
        line = line.strip()
        if not line:
            continue
        if line == "/bye":
            return 0
        if line == "/clear":
            messages = messages[:1] if system else []
            engine.reset()
            continue
        messages.append({"role": "user", "content": line})
        completion = print_stream(
            engine.stream_chunks(engine.chat_prompt(messages), **sampling_options(args))
        )
        print()
        messages.append({"role": "assistant", "content": completion.text})
        if args.stats:
            print_stats(engine, completion)


def print_stream(chunks: Any) -> Any:
    completion = None
    for chunk in chunks:
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        if chunk.completion is not None:
            completion = chunk.completion
    return completion


def kernel_variant_line() -> str:
    from warmload import kernels

    if kernels.VARIANT is None:
        return f"none: {kernels.VARIANT_REASON}"
    return f"{kernels.VARIANT} ({kernels.VARIANT_REASON.split(' (')[0]}; `warmload info`)"


def print_stats(engine: Any, completion: Any) -> None:
    from warmload.memstats import mapped_file, peak_rss_bytes

    t = completion.timings
    evaluated = t.prompt_tokens - t.cached_tokens
    lines = [
        ("load time", f"{engine.load_seconds:.3f} s"),
        (
            "prompt",
            f"{t.prompt_tokens} tokens ({t.cached_tokens} cached), {evaluated} evaluated "
            f"in {t.prompt_seconds:.3f} s, {t.prompt_tokens_per_second:.1f} tokens/s",
        ),
        ("time to first token", f"{t.ttft_seconds:.3f} s"),
        ("decode", f"{t.generated_tokens} tokens, {t.decode_tokens_per_second:.1f} tokens/s"),
        ("finish reason", completion.finish_reason),
        ("peak RSS", format_bytes(peak_rss_bytes())),
        ("kernels", kernel_variant_line()),
    ]
    mapped = mapped_file(engine.path) if engine.path.is_file() else None
    if mapped is not None and mapped.mapped_bytes:
        lines.append(
            (
                "model mapped / resident",
                f"{format_bytes(mapped.mapped_bytes)} / {format_bytes(mapped.resident_bytes)}",
            )
        )
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}", file=sys.stderr)
