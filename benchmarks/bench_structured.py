"""Constrained decoding cost: compile time and per-token mask time of llguidance (what warmload
uses), xgrammar and outlines-core on one JSON schema, over SmolLM2's 49k-token and Qwen2.5's
151k-token vocabularies (built from the GGUF files with warmload's tokenizer code), and the
whole per-token overhead warmload adds (mask -> -inf on the logits row), next to a SmolLM2
decode step measured in the same run.

Each library walks the same valid document token by token: mask for the next token, then
advance by the document's token (the mask must allow it: checked). xgrammar and outlines-core
are optional (`pip install xgrammar outlines-core`; xgrammar pulls in transformers and
triton); a missing one is reported as such. Prints JSON lines, then a table.

    .venv/bin/python benchmarks/bench_structured.py [--qwen PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "email", "role", "address", "tags", "score"],
    "additionalProperties": False,
}
DOCUMENT = json.dumps(
    {
        "name": "Ada Lovelace",
        "age": 36,
        "email": "ada@example.org",
        "role": "admin",
        "address": {"street": "12 St James's Square", "city": "London"},
        "tags": ["mathematics", "analytical engine", "poetry"],
        "score": 99.5,
    },
    separators=(",", ":"),
)


def apply_words(words: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    """The same masking warmload does (structured.GrammarProcessor.apply), from a library's
    bitmask words: bit t%32 of word t//32 allows token t."""
    n = logits.shape[-1]
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:n].view(bool)
    out = np.full(n, -np.inf, dtype=np.float32)
    np.copyto(out, logits.numpy(), where=allowed)
    return torch.from_numpy(out)


def pieces(tokenizer: Any) -> list[bytes]:
    return [tokenizer.token_to_piece(t) for t in range(tokenizer.vocab_size)]


def run_llguidance(tokenizer: Any, ids: list[int]) -> dict[str, Any]:
    import llguidance

    from warmload.server.structured import GrammarProcessor, ll_tokenizer

    t0 = time.perf_counter()
    ll_tokenizer(tokenizer)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        SCHEMA, defaults={"whitespace_flexible": False}
    )
    processor = GrammarProcessor(grammar, tokenizer)
    compile_s = time.perf_counter() - t0
    logits = torch.zeros(tokenizer.vocab_size)
    mask_us, total_us = [], []
    for token in ids:
        t0 = time.perf_counter()
        processor.matcher.compute_bitmask()  # the library's part alone
        t1 = time.perf_counter()
        masked = processor.apply(logits)  # warmload's whole step: mask, -inf row, advance
        processor.accept(token)
        t2 = time.perf_counter()
        assert masked[token] == 0, f"llguidance refused token {token}"
        mask_us.append((t1 - t0) * 1e6)
        total_us.append((t2 - t1) * 1e6)
    return {"setup_s": setup, "compile_s": compile_s, "mask_us": mask_us, "total_us": total_us}


def run_xgrammar(tokenizer: Any, ids: list[int]) -> dict[str, Any]:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(
        pieces(tokenizer), xgr.VocabType.RAW, stop_token_ids=sorted(tokenizer.stop_ids)
    )
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":")
    )
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - t0
    bitmask = xgr.allocate_token_bitmask(1, tokenizer.vocab_size)
    logits = torch.zeros(tokenizer.vocab_size)
    mask_us, total_us = [], []
    for token in ids:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        t1 = time.perf_counter()
        masked = apply_words(bitmask.numpy()[0], logits)
        assert matcher.accept_token(token), f"xgrammar refused token {token}"
        t2 = time.perf_counter()
        assert masked[token] == 0
        mask_us.append((t1 - t0) * 1e6)
        total_us.append((t2 - t0) * 1e6)  # mask + apply + advance
    return {"setup_s": setup, "compile_s": compile_s, "mask_us": mask_us, "total_us": total_us}


def run_outlines(tokenizer: Any, ids: list[int]) -> dict[str, Any]:
    import outlines_core as oc

    t0 = time.perf_counter()
    stops = set(tokenizer.stop_ids)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else min(stops)
    vocab_map: dict[Any, list[int]] = {}
    for token, piece in enumerate(pieces(tokenizer)):
        if token in stops or not piece:
            continue
        vocab_map.setdefault(piece, []).append(token)
    vocabulary = oc.Vocabulary(eos, vocab_map)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    regex = oc.json_schema.build_regex_from_schema(json.dumps(SCHEMA))
    index = oc.Index(regex, vocabulary)
    guide = oc.Guide(index)
    compile_s = time.perf_counter() - t0
    mask = torch.zeros((tokenizer.vocab_size + 31) // 32, dtype=torch.int32)
    logits = torch.zeros(tokenizer.vocab_size)
    mask_us, total_us = [], []
    for token in ids:
        t0 = time.perf_counter()
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        t1 = time.perf_counter()
        masked = apply_words(mask.numpy(), logits)
        guide.advance(token)
        t2 = time.perf_counter()
        assert masked[token] == 0, f"outlines-core refused token {token}"
        mask_us.append((t1 - t0) * 1e6)
        total_us.append((t2 - t0) * 1e6)  # mask + apply + advance
    return {"setup_s": setup, "compile_s": compile_s, "mask_us": mask_us, "total_us": total_us}


@torch.inference_mode()
def decode_step_us(model_name: str, steps: int = 64) -> float:
    """Median single-sequence decode step (forward + logits) of a model, in the same process
    and thread settings: the reference the per-token overhead is put to."""
    from warmload.engine import load_engine

    engine = load_engine(model_name, ctx=512)
    model = engine.model
    cache = model.new_cache(steps + 8, 1)
    model(torch.tensor([[1, 2, 3, 4]]), cache, 0)
    times = []
    for pos in range(4, 4 + steps):
        t0 = time.perf_counter()
        hidden = model(torch.tensor([[pos]]), cache, pos)
        model.compute_logits(hidden)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen", default="/work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from warmload.catalog import resolve_model_path
    from warmload.tokenizer import load_tokenizer

    vocabularies = {"smollm2 (49k)": resolve_model_path("smollm2")}
    if Path(args.qwen).exists():
        vocabularies["qwen2.5 (151k)"] = Path(args.qwen)
    step = decode_step_us("smollm2")
    print(json.dumps({"smollm2_decode_step_us": round(step, 1)}))
    rows = []
    for vocab_name, path in vocabularies.items():
        tokenizer = load_tokenizer(path)
        ids = tokenizer.encode(DOCUMENT, add_special=False)
        for lib, run in (
            ("llguidance", run_llguidance),
            ("xgrammar", run_xgrammar),
            ("outlines-core", run_outlines),
        ):
            try:
                results = [run(tokenizer, ids) for _ in range(args.repeat)]
            except ImportError as exc:
                print(json.dumps({"vocab": vocab_name, "library": lib, "missing": str(exc)}))
                continue
            mask = [statistics.median(r["mask_us"]) for r in results]
            total = [statistics.median(r["total_us"]) for r in results]
            p99 = [float(np.percentile(r["mask_us"], 99)) for r in results]
            row = {
                "vocab": vocab_name,
                "library": lib,
                "tokens": len(ids),
                "setup_s": round(results[0]["setup_s"], 3),  # cold: llguidance caches its table
                "compile_s": round(min(r["compile_s"] for r in results), 4),
                "mask_us_median": round(min(mask), 1),
                "mask_us_p99": round(min(p99), 1),
                "per_token_us_median": round(min(total), 1),
                "per_token_vs_smollm2_step": round(min(total) / step, 4),
            }
            rows.append(row)
            print(json.dumps(row))
    print()
    head = f"{'vocab':16} {'library':14} {'setup s':>8} {'compile s':>10} {'mask us':>8}"
    print(head + f" {'p99 us':>8} {'per-token us':>13} {'/ step':>7}")
    for r in rows:
        print(
            f"{r['vocab']:16} {r['library']:14} {r['setup_s']:8.3f} {r['compile_s']:10.4f} "
            f"{r['mask_us_median']:8.1f} {r['mask_us_p99']:8.1f} {r['per_token_us_median']:13.1f}"
            f" {r['per_token_vs_smollm2_step']:7.3f}"
        )


if __name__ == "__main__":
    main()
