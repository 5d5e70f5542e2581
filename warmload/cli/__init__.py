"""The `warmload` command: argparse subcommands, the only place that prints or exits.

Each subcommand lives in its own module with `add_parser(subparsers)`; heavy imports (torch)
happen inside the handlers so `warmload --help` and `warmload inspect` stay instant.
Errors print `error: ...` and exit 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from warmload import __version__
from warmload.cli import bench, cache, files, generate, info, inspect, serve
from warmload.errors import WarmloadError

SUBCOMMANDS = (generate, inspect, bench, serve, files, cache, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmload",
        description="Load GGUF/SafeTensors models to the first token fast, keep them warm.",
    )
    parser.add_argument("--version", action="version", version=f"warmload {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = os.environ.get("WARMLOAD_LOG", "info" if getattr(args, "verbose", False) else "")
    if level:
        logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (WarmloadError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
