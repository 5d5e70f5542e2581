"""Soak `warmload serve` with mixed traffic: valid requests (OpenAI and Ollama, streaming or
not, n>1, structured output, embeddings), abandoned ones (non-streaming requests whose client
times out after 0.1 s with max_tokens 3000; streams dropped after the first event) and hostile
ones (seed 2**64, NaN, JSON nested 100k deep, unknown roles, oversized bodies, bad schemas),
from CLIENTS threads on 127.0.0.1 for SECONDS. Bounded: every request has a client timeout, a
request that hits it counts as hung.

Pass: zero hung requests, zero unexpected statuses (5xx or a 4xx where a 200 was due), every
model answering at the end with its batch rows free, and the server's RSS (sampled every 10 s
from /proc) flat within 10% after the warm-up (the first fifth of the run).

    .venv/bin/python benchmarks/soak_server.py [--seconds 1800] [--clients 16]
        [--model smollm2] [--model gemma3-270m] [--threads 2]

Prints a JSON line per RSS sample and a final JSON summary (exit status 1 on a failure).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REQUEST_TIMEOUT = 120.0
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(
    port: int, method: str, path: str, body: bytes | None, timeout: float
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def valid(rng: random.Random, model: str) -> tuple[str, dict, int]:
    """(path, body, expected status) of a request that must succeed."""
    chat = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
    options = [
        ("/v1/completions", {"model": model, "prompt": rng.choice(PROMPTS), "max_tokens": 16}),
        ("/v1/chat/completions", {**chat, "max_tokens": 16, "stream": rng.random() < 0.5}),
        ("/v1/chat/completions", {**chat, "max_tokens": 8, "n": 3, "seed": rng.randrange(99)}),
        (
            "/v1/chat/completions",
            {
                **chat,
                "max_tokens": 40,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": SCHEMA},
                },
            },
        ),
        ("/v1/embeddings", {"model": model, "input": [rng.choice(PROMPTS), "short"]}),
        ("/api/chat", {**chat, "stream": rng.random() < 0.5, "options": {"num_predict": 12}}),
        ("/api/generate", {"model": model, "prompt": "Hi", "options": {"num_predict": 8}}),
        ("/api/show", {"model": model}),
    ]
    path, body = rng.choice(options)
    return path, body, 200


HOSTILE = [  # (path, raw body, expected status)
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                         "seed": 2**64}).encode(), 400),
    ("/api/chat", json.dumps({"messages": [{"role": "user", "content": "x"}],
                              "options": {"seed": 2**64}}).encode(), 400),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400),
    ("/v1/completions", ("[" * 100_000 + "]" * 100_000).encode(), 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400),
    ("/v1/completions", json.dumps({"prompt": "x" * (5 << 20)}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}}
     ).encode(), 400),
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 10**9}).encode(), 400),
]  # fmt: skip
PROMPTS = [
    "Once upon a time",
    "List three fruits.",
    "What is 2 + 2?",
    "Write a haiku about rain.",
    "Explain gravity in one sentence.",
]


def abandon(port: int, model: str, rng: random.Random) -> None:
    """A client that gives up: non-streaming after 0.1 s, or a stream after its first event."""
    stream = rng.random() < 0.5
    body = json.dumps({"model": model, "prompt": "Tell me a long story.", "max_tokens": 3000,
                       "stream": stream}).encode()  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
    try:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        if stream:
            sock.recv(1024)
        else:
            time.sleep(0.1)
    finally:
        sock.close()


def client(port: int, models: list[str], deadline: float, seed: int, tally: Counter) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        kind = rng.choices(["valid", "hostile", "abandon"], [6, 3, 1])[0]
        model = rng.choice(models)
        try:
            if kind == "abandon":
                abandon(port, model, rng)
                tally["abandoned"] += 1
                continue
            if kind == "valid":
                path, body, expected = valid(rng, model)
                raw = json.dumps(body).encode()
            else:
                path, raw, expected = rng.choice(HOSTILE)
            status, _ = call(port, "POST", path, raw, REQUEST_TIMEOUT)
            tally[f"{kind} ok" if status == expected else f"{kind} got {status}"] += 1
        except TimeoutError:
            tally["hung"] += 1
        except OSError as exc:
            tally[f"connection error {type(exc).__name__}"] += 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = args.model or ["smollm2"]
    port = free_port()
    cmd = [sys.executable, "-m", "warmload", "serve", "--port", str(port), "-t", str(args.threads)]
    cmd += ["-c", "4096", "--max-models", str(len(models))]
    for m in models:
        cmd += ["-m", m]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [Path(m).stem if Path(m).suffix else m for m in models]
    try:
        for model in ids:  # load every model before the clock starts
            for _ in range(600):
                try:
                    body = json.dumps({"model": model, "prompt": "Hi", "max_tokens": 1}).encode()
                    if call(port, "POST", "/v1/completions", body, 60)[0] == 200:
                        break
                except OSError:
                    time.sleep(0.5)
        started = time.monotonic()
        deadline = started + args.seconds
        tally: Counter = Counter()
        threads = [
            threading.Thread(target=client, args=(port, ids, deadline, i, tally), daemon=True)
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            time.sleep(min(10.0, max(1.0, deadline - time.monotonic())))
            sample = {"t": round(time.monotonic() - started, 1), "rss_bytes": rss_bytes(server.pid)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if time.monotonic() > deadline + REQUEST_TIMEOUT + 30:
                break
        hung_threads = sum(t.is_alive() for t in threads)
        answering = {}
        for model in ids:
            body = json.dumps({"model": model, "prompt": "Hi", "max_tokens": 2}).encode()
            answering[model] = call(port, "POST", "/v1/completions", body, 60)[0] == 200
        health = json.loads(call(port, "GET", "/health", None, 10)[1])
        after = [s["rss_bytes"] for s in samples if s["t"] >= args.seconds / 5] or [0]
        drift = (max(after) - min(after)) / max(1, min(after))
        unexpected = {k: v for k, v in tally.items() if " got " in k or k.startswith("conn")}
        ok = (
            tally["hung"] == 0 and hung_threads == 0 and not unexpected
            and all(answering.values()) and drift <= 0.10 and health["status"] == "ok"
        )  # fmt: skip
        print(json.dumps({
            "seconds": args.seconds, "clients": args.clients, "models": ids,
            "requests": dict(tally), "hung": tally["hung"] + hung_threads,
            "unexpected": unexpected, "answering": answering, "health": health["status"],
            "rss_after_warmup_min": min(after), "rss_after_warmup_max": max(after),
            "rss_drift": round(drift, 4), "pass": ok,
        }))  # fmt: skip
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
