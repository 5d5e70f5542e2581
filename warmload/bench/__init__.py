"""`warmload bench`: llama-bench-style measurements of warmload and its peers, side by side.

Each (model, backend, threads) runs in a fresh worker process (`python -m
warmload.bench.worker SPEC`), so peak RSS and import state belong to that backend alone. All
backends get the same prompt token ids (made by warmload's tokenizer). Results are rows of
model, size, params, backend, threads, test and value (mean ± sd, min, median). warmload's
rows name the kernel variant that ran ("warmload[avx2]"); backend "warmload[avx2]" forces
that variant (WARMLOAD_KERNELS in the worker).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from warmload.errors import WarmloadError

PROMPT_TEXT = (
    "The history of computing is a story of people who wanted answers faster than they could "
    "work them out by hand. Charles Babbage designed engines of brass and steam; Ada Lovelace "
    "saw that they could manipulate symbols, not only numbers. A century later, Alan Turing "
    "described a universal machine, and the first electronic computers filled rooms with "
    "valves that failed every few hours. Transistors, integrated circuits and microprocessors "
    "followed, each shrinking the machine and growing what it could do. "
)
TTFT_TOKENS = 20
# Peers installed apart from the venv (`make bench-peers`): backend -> folder put first on the
# worker's PYTHONPATH. llama.cpp-avx2 is llama-cpp-python built for AVX2/FMA/F16C only, the
# peer of warmload's avx2 kernel variant on any x86 machine.
PEER_DIRS = {"llama.cpp-avx2": ".peers/llama-avx2"}
PEERS_ROOT_ENV = "WARMLOAD_PEERS_ROOT"  # where .peers/ is (default: the current directory)


def backend_name(backend: str, variant: str | None) -> str:
    """warmload on a kernel variant is the backend "warmload[variant]"."""
    return f"{backend}[{variant}]" if variant else backend


def split_backend(backend: str) -> tuple[str, str | None]:
    """ "warmload[avx2]" -> ("warmload", "avx2"); other backends -> (backend, None)."""
    base, _, rest = backend.partition("[")
    return base, (rest.rstrip("]") or None)


def peer_dir(backend: str) -> Path | None:
    """The folder of a peer installed apart (PEER_DIRS), or None for the others."""
    if backend not in PEER_DIRS:
        return None
    return Path(os.environ.get(PEERS_ROOT_ENV, ".")) / PEER_DIRS[backend]


def worker_env(backend: str) -> dict[str, str]:
    """The worker's environment: WARMLOAD_KERNELS for a warmload variant, PYTHONPATH for a
    peer installed apart (WarmloadError when it is not there)."""
    env = dict(os.environ)
    base, variant = split_backend(backend)
    if variant:
        env["WARMLOAD_KERNELS"] = variant
    folder = peer_dir(base)
    if folder is not None:
        if not folder.is_dir():
            raise WarmloadError(f"{backend}: {folder} not found; build it with `make bench-peers`")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(folder.resolve()), env.get("PYTHONPATH")])
        )
    return env


@dataclass(frozen=True, slots=True)
class BenchSpec:
    backend: str
    model: str
    threads: int
    ctx: int
    prompt_ids: tuple[int, ...]
    n_prompt: int  # pp test length
    n_gen: int  # tg test length
    repetitions: int
    load_modes: tuple[str, ...] = ("mmap",)


@dataclass(frozen=True, slots=True)
class BenchRow:
    model: str
    size_bytes: int
    params: int
    backend: str
    threads: int
    test: str  # "load mmap" | "ttft20" | "pp512" | "tg128" | "rss"
    unit: str  # "s" | "t/s" | "MiB"
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            mean=self.mean, sd=self.sd, min=min(self.values), median=statistics.median(self.values)
        )
        return d


def prompt_ids_for(model_path: Path, n_tokens: int) -> list[int]:
    """At least n_tokens ids of fixed English text, from the model's own tokenizer."""
    from warmload.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    ids = tokenizer.encode(PROMPT_TEXT, add_special=True)
    body = tokenizer.encode(PROMPT_TEXT, add_special=False)
    while len(ids) < n_tokens:
        ids += body
    return ids[:n_tokens]


def run_worker(
    module: str, payload: object, what: str, timeout_s: float, env: dict | None = None
) -> dict:
    """`python -m module JSON(payload)` in a fresh process: its last JSON line, or a
    WarmloadError naming `what` with the end of its output."""
    cmd = [sys.executable, "-m", module, json.dumps(asdict(payload))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise WarmloadError(f"{what} failed: " + " | ".join(tail))
    return json.loads(lines[-1])


def run_spec(spec: BenchSpec, timeout_s: float = 1800) -> dict:
    """Runs one worker process and returns its JSON result."""
    what = f"{spec.backend} on {spec.model}"
    return run_worker("warmload.bench.worker", spec, what, timeout_s, worker_env(spec.backend))


def run_bench(
    models: Sequence[Path],
    backends: Sequence[str],
    threads: Sequence[int],
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 5,
    load_modes: Sequence[str] = ("mmap",),
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    from warmload.formats.open import open_checkpoint

    rows: list[BenchRow] = []
    for model in models:
        with open_checkpoint(model) as ckpt:
            size = sum(t.nbytes for t in ckpt.tensors.values())
            params = sum(t.n_elements for t in ckpt.tensors.values())
        ids = prompt_ids_for(model, max(n_prompt, TTFT_TOKENS, 16))
        for backend in backends:
            for n_threads in threads:
                spec = BenchSpec(
                    backend,
                    str(model),
                    n_threads,
                    max(1024, n_prompt + n_gen + 64),
                    tuple(ids),
                    n_prompt,
                    n_gen,
                    repetitions,
                    tuple(load_modes),
                )
                result = run_spec(spec)
                label = backend
                if split_backend(backend)[0] == "warmload":  # named after its kernel variant
                    label = backend_name("warmload", result.get("variant") or "no kernels")
                for test, (unit, values) in result["tests"].items():
                    row = BenchRow(
                        model.name, size, params, label, n_threads, test, unit, tuple(values)
                    )
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows
