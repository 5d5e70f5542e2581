"""warmload quantize vs llama.cpp's quantizer (llama_cpp.llama_model_quantize), same source,
same run: speed (weights per second, min and median of --runs), whether the files are
identical, and quality (KL divergence and top-1 agreement of next-token distributions against
the F16 source on a fixed text).

The F16 source is made from a shipped model with warmload (dequantize + F16), as a user would.
Logits come from warmload's engine (`--evaluator warmload`) or llama.cpp (`llama_cpp`); both
files of a type are evaluated by the same one. Prints JSON lines, then a table.

    .venv/bin/python benchmarks/bench_quantize.py --model smollm2 --runs 3

Run from a checkout other than the installed one with PYTHONPATH=. (a script run by path
imports the installed warmload, not the working tree's).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from warmload.catalog import resolve_model_path
from warmload.formats.gguf import read_gguf
from warmload.quant.quantize_mix import FILE_TYPES
from warmload.quantizer import quantize_checkpoint

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a "
    "system that could produce books quickly and cheaply. Before that, books were copied by "
    "hand, usually by monks, and a single Bible could take years to finish. The new presses "
    "spread across Europe within a few decades: by 1500 more than two hundred cities had one, "
    "and millions of volumes had been printed. Cheaper books meant that more people learned to "
    "read, scientific results could be shared and checked, and new ideas travelled faster than "
    "ever before. Historians still argue about how much the press caused the Reformation and "
    "the scientific revolution, but few doubt that it changed how knowledge was stored, "
    "copied and trusted. Today the same questions come back with every new technology that "
    "makes copying easier, from photocopiers to the internet and language models."
)
DEFAULT_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0",
                 "Q4_1", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "F16", "BF16"]  # fmt: skip


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _no_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs every tensor it quantizes; printing them would slow its side down."""


def _quiet_llama_cpp() -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    llama_cpp.llama_log_set(_no_log, ctypes.c_void_p())
    default_params = lib.llama_model_default_params

    def model_params():  # no AMX weight buffers: they crash in VMs that do not enable AMX
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = model_params


def _llama_quantize(src: Path, dst: Path, qtype: str, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: llama.cpp's threads are ours)."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = FILE_TYPES[qtype][0], threads
    t0, c0 = time.perf_counter(), time.process_time()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {qtype}")
    return seconds, cpu


def _ours(src: Path, dst: Path, qtype: str, threads: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    quantize_checkpoint(src, dst, qtype, threads=threads)
    return time.perf_counter() - t0, time.process_time() - c0


class _Evaluator:
    """Next-token log-probabilities of TEXT under a model file."""

    def __init__(self, kind: str, src: Path) -> None:
        self.kind = kind
        if kind == "llama_cpp":
            import llama_cpp

            llm = llama_cpp.Llama(str(src), n_ctx=512, vocab_only=True, verbose=False)
            self.tokens = llm.tokenize(TEXT.encode(), add_bos=True)
        else:
            import warmload

            self.tokens = warmload.load_tokenizer(src).encode(TEXT)

    def logprobs(self, path: Path) -> np.ndarray:
        if self.kind == "llama_cpp":
            import llama_cpp

            llm = llama_cpp.Llama(
                str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0
            )
            llm.eval(self.tokens)
            x = np.array(llm.scores[: len(self.tokens)], dtype=np.float64)
            del llm
        else:
            import warmload

            x = warmload.load(str(path)).logits(self.tokens).double().numpy()
        x -= x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _quality(ref: np.ndarray, q: np.ndarray) -> dict[str, float]:
    kl = (np.exp(ref) * (ref - q)).sum(axis=1)
    top1 = (ref.argmax(axis=1) == q.argmax(axis=1)).mean()
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.quantile(kl, 0.99)),
            "top1": float(top1)}  # fmt: skip


def _f16_source(model: str, work: Path) -> tuple[Path, float]:
    t0 = time.perf_counter()
    r = quantize_checkpoint(resolve_model_path(model), work / f"{model}-f16.gguf", "F16",
                            allow_requantize=True)  # fmt: skip
    return r.path, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="shipped model to make the F16 source of")
    ap.add_argument("--src", type=Path, help="use this F16 GGUF instead")
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evaluator", choices=["warmload", "llama_cpp", "none"], default="warmload")
    ap.add_argument(
        "--kernels",
        action="store_true",
        help="only time the block quantizers, one thread, vs ggml_quantize_chunk",
    )
    args = ap.parse_args(argv)
    _quiet_llama_cpp()
    if args.kernels:
        return _bench_kernels(args.runs)
    with tempfile.TemporaryDirectory(prefix="bench_quantize.") as tmp:
        work = Path(tmp)
        src, f16_s = (args.src, 0.0) if args.src else _f16_source(args.model, work)
        with read_gguf(src) as ckpt:
            n_weights = sum(i.n_elements for i in ckpt.tensors.values())
        print(json.dumps({"source": str(src), "weights": n_weights, "make_f16_s": round(f16_s, 2)}))
        ev, ref = None, None
        if args.evaluator != "none":
            try:
                ev = _Evaluator(args.evaluator, src)
                ref = ev.logprobs(src)
            except Exception as e:  # noqa: BLE001 - report and go on with speed only
                print(json.dumps({"evaluator": args.evaluator, "error": repr(e)}), file=sys.stderr)
        rows = []
        for qtype in args.types.split(","):
            row = _bench_type(src, work, qtype, args, n_weights, ev, ref)
            print(json.dumps(row), flush=True)
            rows.append(row)
    _table(rows)
    return 0


def _bench_type(src, work, qtype, args, n_weights, ev, ref) -> dict:
    ours_p, ref_p = work / f"ours-{qtype}.gguf", work / f"llama-{qtype}.gguf"
    ours_s, ref_s, ours_cpu, ref_cpu = [], [], [], []
    for _ in range(args.runs):  # alternate so both see the same machine state
        for times, cpus, fn, dst in ((ours_s, ours_cpu, _ours, ours_p),
                                     (ref_s, ref_cpu, _llama_quantize, ref_p)):  # fmt: skip
            wall, cpu = fn(src, dst, qtype, args.threads)
            times.append(wall)
            cpus.append(cpu)
    row = {
        "type": qtype,
        "bytes": ours_p.stat().st_size,
        "bpw": round(ours_p.stat().st_size * 8 / n_weights, 3),
        "ours_s_min": round(min(ours_s), 3),
        "ours_s_median": round(statistics.median(ours_s), 3),
        "llama_s_min": round(min(ref_s), 3),
        "llama_s_median": round(statistics.median(ref_s), 3),
        "ours_mw_per_s": round(n_weights / min(ours_s) / 1e6, 2),
        "llama_mw_per_s": round(n_weights / min(ref_s) / 1e6, 2),
        "speed_ratio": round(min(ref_s) / min(ours_s), 3),
        # CPU seconds: less sensitive to other processes sharing the cores than wall time
        "ours_cpu_s_min": round(min(ours_cpu), 3),
        "llama_cpu_s_min": round(min(ref_cpu), 3),
        "cpu_ratio": round(min(ref_cpu) / min(ours_cpu), 3),
        "identical": _sha(ours_p) == _sha(ref_p),
    }
    if ev is not None and ref is not None:
        ours_q = _quality(ref, ev.logprobs(ours_p))
        llama_q = ours_q if row["identical"] else _quality(ref, ev.logprobs(ref_p))
        row |= {f"ours_{k}": round(v, 6) for k, v in ours_q.items()}
        row |= {f"llama_{k}": round(v, 6) for k, v in llama_q.items()}
    ours_p.unlink()
    ref_p.unlink()
    return row


def _bench_kernels(runs: int) -> int:
    """Per GGML type: our kernel (numpy; C for the K-quants where built) vs llama.cpp's
    ggml_quantize_chunk, one thread each, on the same 4M heavy-tailed weights; also checks the
    bytes are identical."""
    import llama_cpp

    from warmload.formats.ggml_types import GGML_TYPES
    from warmload.quant.quantize import quantize

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
    fn = ctypes.CDLL(str(libs[0])).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip
    rng = np.random.default_rng(0)
    x = (rng.standard_t(4, (2048, 2048)) * 0.02).astype(np.float32)
    rows = []
    for qtype in ["Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q5_1", "Q4_K", "Q4_0", "Q4_1", "Q3_K", "Q2_K"]:
        t = GGML_TYPES[qtype]
        ref = np.zeros((2048, 2048 // t.block_size * t.type_size), np.uint8)
        ours_s, ref_s = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            ours = quantize(x, qtype, threads=1)
            t1 = time.perf_counter()
            fn(t.id, x.ctypes.data, ref.ctypes.data, 0, 2048, 2048, None)
            ref_s.append(time.perf_counter() - t1)
            ours_s.append(t1 - t0)
        row = {"kernel": qtype, "ours_mw_per_s": round(x.size / min(ours_s) / 1e6, 2),
               "llama_mw_per_s": round(x.size / min(ref_s) / 1e6, 2),
               "speed_ratio": round(min(ref_s) / min(ours_s), 3),
               "identical": bool(np.array_equal(ours, ref))}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    for r in rows:
        print(" | ".join(f"{str(v):>14}" for v in r.values()))
    return 0


def _table(rows: list[dict]) -> None:
    cols = ["type", "bpw", "ours_mw_per_s", "llama_mw_per_s", "speed_ratio", "cpu_ratio",
            "identical", "ours_kl_mean", "llama_kl_mean", "ours_top1", "llama_top1"]  # fmt: skip
    print()
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r.get(c, '-')):>14}" for c in cols))


if __name__ == "__main__":
    raise SystemExit(main())
