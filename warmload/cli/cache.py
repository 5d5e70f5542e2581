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
    from warmload.loader import weight_cache

    quantized = weight_cache.CACHE_NAME
    if args.action == "list":
        print(f"cache folder: {cache_dir()}")
        rows = [(e.name, format_bytes(e.nbytes), e.files, e.description) for e in list_caches()]
        nbytes, files = weight_cache.usage()
        rows.append((quantized, format_bytes(nbytes), files, "models quantized at load (LRU)"))
        print_table(("name", "size", "files", "holds"), rows)
        for e in weight_cache.list_entries():
            print(f"  {e.qtype:<7} {format_bytes(e.nbytes):>10}  {e.source}")
        return 0
    names = [n for n in args.names if n != quantized]
    removed = clear_caches(names) if names or not args.names else []
    for entry in removed:
        print(f"removed {entry.name}: {format_bytes(entry.nbytes)} in {entry.files} file(s)")
    if not args.names or quantized in args.names:
        nbytes, files = weight_cache.clear()
        if files:
            removed.append(quantized)
            print(f"removed {quantized}: {format_bytes(nbytes)} in {files} file(s)")
    if not removed:
        print("nothing to remove")
    return 0
