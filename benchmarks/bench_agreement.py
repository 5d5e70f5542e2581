"""Agreement benchmark: warmload's next-token predictions against llama.cpp and transformers.

Reads tests/golden/generation_<model>.json (each reference's greedy continuations and its own
teacher-forced top-1/top-5 per position, made by scripts/make_goldens.py from llama-cpp-python
and transformers), feeds warmload each reference's sequence and reports per model and reference:
  top1_agreement   share of positions where warmload's top-1 equals the reference's
  first_token      prompts whose first generated token (top-1 at the last prompt token) matches
  first_max_abs    max |logit difference| at the first generated position over the reference's
                   top-50 tokens (max over prompts)
  top5_max_abs     the same over the reference's top-5 tokens at every position
  flips_at_ties    of the positions where warmload's top-1 differs, those where the
                   reference's own top-1 leads its second by under 0.5 (a near-tie)
  first_kl         KL(reference || warmload) at the first generated position over the reference's
                   top-50 tokens plus one bucket for the rest (a lower bound of the full KL);
                   max over prompts
The row "llama.cpp vs transformers" compares the two references with each other where their
sequences coincide (the positions before their continuations first differ), as a yardstick.

    .venv/bin/python benchmarks/bench_agreement.py [--models smollm2,gemma3-270m] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

import warmload
from warmload.cli.render import print_table

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "golden"
TIE = 0.5  # a reference top-1 lead under this many logits: a near-tie


def coarse_kl(ref: dict[str, Any], ours: torch.Tensor) -> float:
    """KL(ref || ours) over the reference's stored top-k tokens plus one bucket for the rest."""
    ids = torch.tensor(ref["ids"])
    ref_logp = torch.tensor(ref["logits"], dtype=torch.float64) - ref["logsumexp"]
    our_logp = torch.log_softmax(ours.double(), dim=-1)[ids]
    kl = float((ref_logp.exp() * (ref_logp - our_logp)).sum())
    ref_tail = max(1.0 - float(ref_logp.exp().sum()), 1e-300)
    our_tail = max(1.0 - float(our_logp.exp().sum()), 1e-300)
    return kl + ref_tail * math.log(ref_tail / our_tail)


def compare(engine: Any, prompt: list[int], golden: dict[str, Any]) -> dict[str, Any]:
    """warmload against one reference on one prompt."""
    # as generation computes them: the prompt in one pass, then single decode steps
    logits = engine.logits(prompt + golden["continuation_ids"], decode_from=len(prompt))
    region = logits[len(prompt) - 1 : len(prompt) - 1 + len(golden["top1"])]
    top1 = region.argmax(dim=-1).tolist()
    top5_ids = torch.tensor(golden["top5_ids"])
    top5_diff = (region.gather(1, top5_ids) - torch.tensor(golden["top5_logits"])).abs().max()
    flips = [i for i, (a, b) in enumerate(zip(top1, golden["top1"], strict=True)) if a != b]
    lead = [top[0] - top[1] for top in golden["top5_logits"]]
    first = golden["first"]
    first_diff = (region[0][torch.tensor(first["ids"])] - torch.tensor(first["logits"])).abs()
    return {
        "agree": sum(a == b for a, b in zip(top1, golden["top1"], strict=True)),
        "positions": len(top1),
        "first_equal": top1[0] == golden["continuation_ids"][0],
        "flips": len(flips),
        "flips_at_ties": sum(lead[i] < TIE for i in flips),
        "first_max_abs": float(first_diff.max()),
        "top5_max_abs": float(top5_diff),
        "first_kl": coarse_kl(first, region[0]),
    }


def compare_references(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp against transformers over the positions where both read the same tokens."""
    common = 0
    for x, y in zip(a["continuation_ids"], b["continuation_ids"]):
        if x != y:
            break
        common += 1
    n = min(common + 1, len(a["top1"]), len(b["top1"]))
    logits_b = dict(zip(b["first"]["ids"], b["first"]["logits"]))
    first_a = zip(a["first"]["ids"], a["first"]["logits"])
    shared = [abs(v - logits_b[i]) for i, v in first_a if i in logits_b]
    return {
        "agree": sum(x == y for x, y in zip(a["top1"][:n], b["top1"][:n])),
        "positions": n,
        "first_equal": a["continuation_ids"][0] == b["continuation_ids"][0],
        "first_max_abs": max(shared),
    }


def summarize(model: str, subject: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "subject": subject}
    row["positions"] = sum(p["positions"] for p in parts)
    row["top1_agreement"] = round(sum(p["agree"] for p in parts) / row["positions"], 4)
    row["first_token"] = f"{sum(p['first_equal'] for p in parts)}/{len(parts)}"
    if "flips" in parts[0]:
        ties, flips = sum(p["flips_at_ties"] for p in parts), sum(p["flips"] for p in parts)
        row["flips_at_ties"] = f"{ties}/{flips}"
    for key in ("first_max_abs", "top5_max_abs", "first_kl"):
        if key in parts[0]:
            row[key] = float(f"{max(p[key] for p in parts):.3g}")
    return row


def bench_model(model: str, threads: int) -> list[dict[str, Any]]:
    golden = json.loads((GOLDEN_DIR / f"generation_{model}.json").read_text())
    engine = warmload.load(model, threads=threads)
    by_ref: dict[str, list[dict[str, Any]]] = {}
    between: list[dict[str, Any]] = []
    for data in golden["cases"].values():
        refs = data["references"]
        for ref, ref_golden in refs.items():
            by_ref.setdefault(ref, []).append(compare(engine, data["prompt_ids"], ref_golden))
        between.append(compare_references(refs["llama.cpp"], refs["transformers"]))
    rows = [summarize(model, f"warmload vs {ref}", parts) for ref, parts in by_ref.items()]
    rows.append(summarize(model, "llama.cpp vs transformers", between))
    first_case = next(iter(golden["cases"].values()))["references"]
    for row in rows:
        row["versions"] = sorted(r["version"] for r in first_case.values())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models.split(","):
        for row in bench_model(model, args.threads):
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    columns = ("model", "subject", "positions", "top1_agreement", "flips_at_ties", "first_token")
    columns += ("first_max_abs", "top5_max_abs", "first_kl")
    print_table(columns, [[row.get(c, "-") for c in columns] for row in rows])


if __name__ == "__main__":
    main()
