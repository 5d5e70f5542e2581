"""`warmload serve`: the OpenAI/Ollama-compatible HTTP server."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from warmload.errors import RequestError

if TYPE_CHECKING:
    from warmload.config import ServerConfig


def parse_model_arg(text: str) -> tuple[str, str]:
    """`alias=path` or `path` (id: the file's stem, or the packaged model's name)."""
    if "=" in text:
        alias, path = text.split("=", 1)
        if not alias or not path:
            raise RequestError(f"-m {text!r}: expected alias=PATH", "model")
        return alias, path
    from pathlib import Path

    return (Path(text).stem if Path(text).suffix else text), text


def parse_bytes(text: str) -> int:
    """A size like 8G, 512MiB, 1.5g or 1000000 (bytes)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        msg = f"--memory-budget {text!r}: expected a size like 8G"
        raise RequestError(msg, "memory_budget") from None
    if value <= 0:
        raise RequestError(f"--memory-budget {text!r} must be positive", "memory_budget")
    return int(value * scale)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from warmload.cli.generate import add_model_flags

    p = subparsers.add_parser(
        "serve", help="OpenAI/Ollama-compatible HTTP server", conflict_handler="resolve"
    )
    add_model_flags(p)
    p.add_argument(
        "-m",
        "--model",
        dest="model",
        action="append",
        default=[],
        metavar="[ALIAS=]PATH",
        help="a model to serve (repeatable; the first is the default)",
    )
    p.add_argument(
        "-M",
        "--models",
        dest="models",
        action="append",
        default=[],
        metavar="[ALIAS=]PATH",
        help="another model (repeatable; -m works too)",
    )
    p.add_argument("--models-dir", default=None, help="serve every model file in DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-models", type=int, default=2)
    p.add_argument("--memory-budget", default=None, help="e.g. 8G: evict LRU models above it")
    p.add_argument(
        "--keep-alive",
        type=float,
        default=300.0,
        help="seconds a model stays loaded after its last request (-1: forever)",
    )
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--no-wait", action="store_true", help="503 while a model loads")
    p.add_argument("--parallel", "-np", type=int, default=8, help="sequences decoded together")
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="answer requests for NAME (e.g. gpt-3.5-turbo) with served model MODEL (repeatable)",
    )
    p.add_argument(
        "--fallback-model",
        default=None,
        metavar="MODEL",
        help="answer requests naming an unknown model with MODEL instead of a 404",
    )
    p.set_defaults(handler=run_serve)


def server_config(args: argparse.Namespace) -> ServerConfig:
    from warmload.cli.generate import load_options
    from warmload.config import LoadConfig, ServerConfig

    specs = list(args.model) + args.models
    if not specs and not args.models_dir:
        specs = ["smollm2"]
    return ServerConfig(
        models=tuple(parse_model_arg(s) for s in specs),
        models_dir=args.models_dir,
        host=args.host,
        port=args.port,
        max_models=args.max_models,
        memory_budget_bytes=parse_bytes(args.memory_budget) if args.memory_budget else None,
        keep_alive_seconds=args.keep_alive,
        api_key=args.api_key,
        no_wait=args.no_wait,
        max_batch=args.parallel,
        load=LoadConfig(**load_options(args)),
        aliases=tuple(parse_alias(a) for a in args.alias),
        fallback_model=args.fallback_model,
    )


def parse_alias(text: str) -> tuple[str, str]:
    """`NAME=MODEL` (both non-empty)."""
    name, _, model = text.partition("=")
    if not name or not model:
        raise RequestError(f"--alias {text!r}: expected NAME=MODEL", "alias")
    return name, model


def run_serve(args: argparse.Namespace) -> int:
    from warmload.server import serve

    config = server_config(args)
    print(
        f"warmload serving on http://{config.host}:{config.port} "
        f"(models: {', '.join(m for m, _ in config.models) or args.models_dir})",
        flush=True,
    )
    serve(config)
    return 0
