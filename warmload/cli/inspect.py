"""`warmload inspect PATH [--tensors] [--json]`: what a model file holds, instantly (no torch)."""

from __future__ import annotations

import argparse
import json

from warmload.cli.render import format_bytes, print_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show a model file's metadata and tensors")
    p.add_argument("path", nargs="?", default=None, help="model file/folder or packaged name")
    p.add_argument("-m", "--model", dest="model", help="same as PATH")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--metadata", action="store_true", help="print every metadata key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--residency", action="store_true", help="how much of the file is in the page cache"
    )
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from warmload.catalog import resolve_model_path
    from warmload.formats.open import open_checkpoint
    from warmload.formats.summary import metadata_for_json, summarize

    path = resolve_model_path(args.model or args.path)
    with open_checkpoint(path) as checkpoint:
        summary = summarize(checkpoint)
        if args.residency:
            from warmload.loader.warm import residency

            summary["residency"] = residency(checkpoint)
        if args.json:
            if args.metadata:
                summary["metadata"] = metadata_for_json(checkpoint.metadata)
            if not args.tensors:
                summary.pop("tensors", None)
            print(json.dumps(summary, indent=2))
            return 0
        print_summary(summary)
        if args.metadata:
            print()
            for key, value in metadata_for_json(checkpoint.metadata).items():
                print(f"  {key} = {value}")
        if args.tensors:
            print()
            rows = [
                (t["name"], t["type"], "x".join(map(str, t["shape"])), t["offset"], t["nbytes"])
                for t in summary["tensors"]
            ]
            print_table(("tensor", "type", "shape", "offset", "bytes"), rows)
    return 0


def print_summary(s: dict) -> None:
    lines = [
        ("file", s.get("path")),
        ("format", s.get("format")),
        ("architecture", s.get("architecture")),
        ("name", s.get("name")),
        ("parameters", f"{s.get('parameter_count', 0) / 1e6:.1f} M"),
        ("file type", s.get("file_type")),
        ("file size", format_bytes(s.get("file_size", 0))),
        ("context length", s.get("context_length")),
        ("tokenizer", f"{s.get('tokenizer_model')} (pre: {s.get('tokenizer_pre')})"),
        ("vocab size", s.get("vocab_size")),
        ("chat template", "yes" if s.get("has_chat_template") else "no"),
        ("tensors", s.get("tensor_count")),
    ]
    if "residency" in s:
        lines.append(("page cache", f"{s['residency'] * 100:.1f}% resident"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    print()
    hist = s.get("tensor_types", {})
    rows = [(name, h["count"], format_bytes(h["nbytes"])) for name, h in hist.items()]
    print_table(("type", "tensors", "bytes"), rows)
