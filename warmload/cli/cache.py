"""`warmload cache list|clear [NAME ...]`: what warmload keeps on disk, and removing it."""

from __future__ import annotations

import argparse

from warmload.cli.render import format_bytes, print_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="list or clear warmload's on-disk caches")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("names", nargs="*", help="entries to clear (default: all)")
    p.set_defaults(handler=run_cache_command)


def run_cache_command(args: argparse.Namespace) -> int:
    from warmload.caches import clear_caches, list_caches
    from warmload.config import cache_dir

    if args.action == "list":
        print(f"cache folder: {cache_dir()}")
        print_table(
            ("name", "size", "files", "holds"),
            [(e.name, format_bytes(e.nbytes), e.files, e.description) for e in list_caches()],
        )
        return 0
    removed = clear_caches(args.names)
    for entry in removed:
        print(f"removed {entry.name}: {format_bytes(entry.nbytes)} in {entry.files} file(s)")
    if not removed:
        print("nothing to remove")
    return 0
