"""Concurrent streams against live servers on loopback: aggregate generated tokens/s and
per-request time to first token with 1, 4 and 8 concurrent streaming /v1/completions
requests, for `warmload serve` (continuous batching) and llama-cpp-python's server
(`python -m llama_cpp.server`, one request at a time) on the same model, in the same run.

    .venv/bin/python benchmarks/bench_server.py [--model smollm2] [--streams 1,4,8]
        [--max-tokens 48] [--runs 3] [--threads 2] [--peers llama.cpp]

Each server runs in its own subprocess with the same thread count and context; two full-size
warm-up requests first. Every stream gets a distinct prompt, temperature 0. Generated tokens are
counted by re-tokenizing each stream's text with the model's tokenizer (the same ruler for
both servers). aggregate = all streams' tokens / wall time from the first request to the last
byte. "starved" flags a level where some stream got under a quarter of the fair share of
tokens/s (its tokens / its own duration vs aggregate / streams). Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPTS = [  # open-ended beginnings: the instruct model continues them past 64 tokens
    "Once upon a time, a lighthouse keeper named Tom",
    "The bicycle gear system works by",
    "Here are ten facts about the planet Mars: 1.",
    "The market in the coastal town was busy that morning. Fishermen",
    "Dear Mother and Father, I am writing to you from the ship",
    "Making bread starts in the field, where farmers",
    "The history of the printing press begins in",
    "The life cycle of a butterfly has four stages. First,",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama.cpp's CPU "extra buffer types" (AMX, repacked layouts) off: the venv's build compiles
# the AMX backend, which crashes in llama_decode on this VM (notes/llama-cpp-amx-crash.md).
LLAMA_SERVER_BOOT = """
import runpy, sys
import llama_cpp.llama_cpp as C
default = C.llama_model_default_params
def params():
    p = default()
    p.use_extra_bufts = False
    return p
C.llama_model_default_params = params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def server_command(
    kind: str, path: str, port: int, args: argparse.Namespace, batch: int
) -> list[str]:
    common = ("--port", str(port))
    if kind == "warmload":
        return [sys.executable, "-m", "warmload", "serve", "-m", f"bench={path}", *common] + [
            *("--threads", str(args.threads), "-c", str(args.ctx)),
            *("--parallel", str(batch), "--keep-alive", "-1"),
        ]
    boot = ["-m", "llama_cpp.server"] if args.llama_extra_bufts else ["-c", LLAMA_SERVER_BOOT]
    return [sys.executable, *boot, "--model", path, "--model_alias", "bench", *common] + [
        *("--host", "127.0.0.1", "--n_threads", str(args.threads), "--n_ctx", str(args.ctx)),
        *("--interrupt_requests", "False", "--verbose", "False"),
    ]


def stream_completion(port: int, prompt: str, max_tokens: int) -> dict:
    """One streaming request; returns its text, TTFT and duration (seconds)."""
    body = json.dumps(
        {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
    )
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    parts, first = [], None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        choices = json.loads(line[5:]).get("choices") or [{}]
        text = choices[0].get("text") or ""
        if text and first is None:
            first = time.perf_counter() - started
        parts.append(text)
    conn.close()
    return {"text": "".join(parts), "ttft_s": first, "seconds": time.perf_counter() - started}


def run_level(port: int, streams: int, max_tokens: int, count_tokens) -> dict:
    results: list[dict] = [{} for _ in range(streams)]

    def client(i: int) -> None:
        try:
            results[i] = stream_completion(port, PROMPTS[i % len(PROMPTS)], max_tokens)
        except Exception as exc:  # reported in the row, not a crash of the whole run
            results[i] = {"error": str(exc)}

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"error": errors[0]}
    tokens = [count_tokens(r["text"]) for r in results]
    aggregate = sum(tokens) / wall
    fair = aggregate / streams
    rates = [n / r["seconds"] for n, r in zip(tokens, results)]
    ttfts = [r["ttft_s"] if r["ttft_s"] is not None else r["seconds"] for r in results]
    return {
        "tokens": sum(tokens),
        "wall_s": wall,
        "aggregate_tok_s": aggregate,
        "ttft_median_s": statistics.median(ttfts),
        "ttft_max_s": max(ttfts),
        "min_stream_tok_s": min(rates),
        "starved": any(rate < fair / 4 for rate in rates),
    }


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def bench_server(kind: str, args: argparse.Namespace, path: str, count_tokens) -> list[dict]:
    port = free_port()
    cmd = server_command(kind, path, port, args, max(args.streams))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    try:
        wait_ready(proc, port)
        for prompt in PROMPTS[:2]:  # warm-up: llama.cpp's first full request is much slower
            stream_completion(port, prompt, args.max_tokens)
        for streams in args.streams:
            runs = [
                run_level(port, streams, args.max_tokens, count_tokens) for _ in range(args.runs)
            ]
            rows.append(summarise(kind, streams, runs))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def summarise(kind: str, streams: int, runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"server": kind, "streams": streams, "error": runs[0]["error"]}
    agg = [r["aggregate_tok_s"] for r in good]
    return {
        "server": kind,
        "streams": streams,
        "runs": len(good),
        "aggregate_tok_s_min": min(agg),
        "aggregate_tok_s_median": statistics.median(agg),
        "ttft_median_s": statistics.median(r["ttft_median_s"] for r in good),
        "ttft_max_s": max(r["ttft_max_s"] for r in good),
        "min_stream_tok_s": min(r["min_stream_tok_s"] for r in good),
        "starved": any(r["starved"] for r in good),
        "tokens_per_run": statistics.median(r["tokens"] for r in good),
    }


def print_table(rows: list[dict]) -> None:
    single = {r["server"]: r.get("aggregate_tok_s_median") for r in rows if r["streams"] == 1}
    print(
        f"\n{'server':<10} {'streams':>7} {'agg tok/s med':>13} {'(min)':>7} {'x 1-stream':>10} "
        f"{'TTFT med':>9} {'TTFT max':>9} {'min stream':>10} {'starved':>7}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['server']:<10} {r['streams']:>7} error: {r['error']}")
            continue
        base = single.get(r["server"])
        ratio = r["aggregate_tok_s_median"] / base if base else float("nan")
        print(
            f"{r['server']:<10} {r['streams']:>7} {r['aggregate_tok_s_median']:>13.1f} "
            f"{r['aggregate_tok_s_min']:>7.1f} {ratio:>10.2f} {r['ttft_median_s']:>8.2f}s "
            f"{r['ttft_max_s']:>8.2f}s {r['min_stream_tok_s']:>10.1f} {str(r['starved']):>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--peers", default="llama.cpp", help="comma list; empty: none")
    parser.add_argument(
        "--llama-extra-bufts",
        action="store_true",
        help="keep llama.cpp's AMX/repack buffer types (off by default: see LLAMA_SERVER_BOOT)",
    )
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]

    from warmload.catalog import resolve_model_path
    from warmload.formats.open import open_checkpoint
    from warmload.tokenizer import build_tokenizer

    path = str(resolve_model_path(args.model))
    checkpoint = open_checkpoint(Path(path))
    tokenizer = build_tokenizer(checkpoint.metadata)
    checkpoint.close()

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special=False)) if text else 0

    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "max_tokens": args.max_tokens,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
        ),
        flush=True,
    )
    rows = bench_server("warmload", args, path, count_tokens)
    if "llama.cpp" in args.peers.split(","):
        rows += bench_server("llama.cpp", args, path, count_tokens)
    print_table(rows)
    print("loadavg after:", " ".join(Path("/proc/loadavg").read_text().split()[:3]))


if __name__ == "__main__":
    main()
