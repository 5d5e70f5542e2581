"""`warmload quantize`, `warmload pull` and `warmload verify`: make, fetch and check models."""

from __future__ import annotations

import argparse
import json

from warmload.cli.progress import progress_bar
from warmload.cli.render import format_bytes
from warmload.errors import RequestError


def tensor_type_rule(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected REGEX=TYPE")
    regex, qtype = text.rsplit("=", 1)
    return regex, qtype


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "quantize", help="quantize a GGUF model or a Hugging Face folder (llama.cpp's types)"
    )
    q.add_argument(
        "input",
        help="F32/F16/BF16 GGUF (or quantized, with --allow-requantize), or a Hugging Face "
        "model folder (config.json, tokenizer.json or tokenizer.model, *.safetensors; Llama, "
        "Mistral, Gemma 3; converted on the way)",
    )
    q.add_argument("output")
    q.add_argument("type", help="F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_0, Q5_1, Q4_K_M, "
                   "Q4_K_S, Q4_0, Q4_1, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K")  # fmt: skip
    q.add_argument("--allow-requantize", action="store_true")
    q.add_argument("--pure", action="store_true", help="every tensor in TYPE, no mix")
    q.add_argument("--output-tensor-type", default=None)
    q.add_argument("--token-embedding-type", default=None)
    q.add_argument(
        "--tensor-type", type=tensor_type_rule, action="append", default=[], metavar="REGEX=TYPE"
    )
    q.add_argument("-t", "--threads", type=int, default=None)
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=run_quantize)

    p = subparsers.add_parser("pull", help="download a model with resume and SHA-256 check")
    p.add_argument("url")
    p.add_argument("--sha256", default=None)
    p.add_argument("-o", "--output-dir", default=".")
    p.add_argument("--filename", default=None)
    p.set_defaults(handler=run_pull)

    v = subparsers.add_parser("verify", help="check a file's SHA-256 (remembered until it changes)")
    v.add_argument("path")
    v.add_argument("--sha256", default=None, help="expected hash (default: PATH.sha256)")
    v.set_defaults(handler=run_verify)


def run_quantize(args: argparse.Namespace) -> int:
    from warmload.quantizer import describe, quantize_checkpoint

    with progress_bar(f"quantize {args.type}", unit="weights") as update:
        result = quantize_checkpoint(
            args.input,
            args.output,
            args.type,
            allow_requantize=args.allow_requantize,
            pure=args.pure,
            output_tensor_type=args.output_tensor_type,
            token_embedding_type=args.token_embedding_type,
            tensor_types=tuple(args.tensor_type),
            threads=args.threads,
            progress=update,
        )
    info = describe(result)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"wrote {info['path']} ({info['file_type']})")
    print(
        f"  size     {format_bytes(info['src_bytes'])} -> {format_bytes(info['dst_bytes'])}, "
        f"{info['bits_per_weight']:.2f} bits per weight"
    )
    print(f"  time     {info['seconds']:.2f} s ({info['weights_per_s'] / 1e6:.1f} M weights/s)")
    print(f"  sha256   {info['sha256']}  (also in {info['path']}.sha256)")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from warmload.pull import pull

    with progress_bar("pull") as update:
        result = pull(
            args.url, args.output_dir, sha256=args.sha256, filename=args.filename, progress=update
        )
    state = "downloaded" if result.downloaded else "already present and verified"
    if result.resumed_from:
        state += f" (resumed at {format_bytes(result.resumed_from)})"
    print(f"{result.path}: {state}, {format_bytes(result.nbytes)}")
    print(f"  sha256 {result.sha256}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from warmload.pull import verify

    with progress_bar("sha256") as update:
        result = verify(args.path, args.sha256, progress=update)
    source = " (from the verification record)" if result.from_record else ""
    print(f"{result.sha256}  {result.path}{source}")
    if result.ok is None:
        print("no expected hash given (--sha256) and no PATH.sha256 found: nothing to compare")
        return 0
    if not result.ok:
        raise RequestError(f"{result.path}: SHA-256 mismatch, expected {result.expected}")
    print("OK")
    return 0
