"""Golden generation tests: warmload teacher-forced against llama.cpp's and transformers' text.

tests/golden/generation_<model>.json holds, for each prompt, each reference's greedy
continuation and the reference's own top-1 at every position of prompt + continuation
(made by scripts/make_goldens.py from llama-cpp-python and transformers, never from warmload).
Greedy texts of two correct engines drift apart after a few dozen tokens (llama.cpp uses 8-bit
activations, transformers float32), so we do not compare texts: warmload reads each reference's
sequence and its top-1 at each of those positions must match the reference's top-1 there, at
least 95% of the time for transformers and 90% for llama.cpp, over all prompts of a model.
warmload reads each sequence the way generation does (the prompt in one pass, then one token
per decode step, which runs the 8-bit-activation packed kernels), so the decode path is what is
checked. The first generated token (top-1 at the last prompt token)
must equal both references', and its logits stay within MAX_FIRST_LOGIT_DIFF of transformers'
over transformers' top-50 tokens.
(i.i.d. noise of 0.3 on warmload's logits already drops agreement below both thresholds.)
Top-1 flips between correct engines happen at near-ties, so wherever transformers' top-1 leads
its second by DECISIVE or more, warmload's top-1 must be the same, without exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import warmload

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MODELS = {
    "smollm2": "smollm2_path",
    "gemma3-270m": "gemma3_path",
    "qwen2.5-coder-0.5b": "qwen_path",
}
MIN_AGREEMENT = {"transformers": 0.95, "llama.cpp": 0.90}
DECISIVE = 0.5  # a reference's top-1 logit this far above its second: no near-tie
MAX_FIRST_LOGIT_DIFF = 1.0

pytestmark = pytest.mark.slow  # ~20 s on 2 cores: loads the three real models


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2), packaged as parts (`make test`)."""
    from warmload.catalog import resolve_model_path

    return resolve_model_path("qwen2.5-coder-0.5b")


class Model:
    """One loaded engine, its golden file, and what warmload predicts on each golden sequence."""

    def __init__(self, name: str, path: Path) -> None:
        text = (GOLDEN_DIR / f"generation_{name}.json").read_text()
        self.golden: dict[str, Any] = json.loads(text)
        self.path = path
        self.engine = warmload.load(path, threads=2)
        self._seen: dict[tuple[int, ...], tuple[list[int], torch.Tensor]] = {}

    def evaluate(self, prompt: list[int], golden: dict[str, Any]) -> tuple[list[int], torch.Tensor]:
        """Our top-1 at each golden position, and our logits at the first generated position."""
        ids = prompt + golden["continuation_ids"]
        if tuple(ids) not in self._seen:
            # as generation computes them: the prompt in one pass, then one token per step
            logits = self.engine.logits(ids, decode_from=len(prompt))[len(prompt) - 1 :]
            self._seen[tuple(ids)] = (logits.argmax(dim=-1).tolist(), logits[0].clone())
        top1, first = self._seen[tuple(ids)]
        return top1[: len(golden["top1"])], first

    def cases(self) -> list[tuple[str, list[int], str, dict[str, Any]]]:
        return [
            (case, data["prompt_ids"], ref, golden)
            for case, data in self.golden["cases"].items()
            for ref, golden in data["references"].items()
        ]


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> Model:
    path = request.getfixturevalue(MODELS[request.param])
    return Model(request.param, path)


def test_golden_is_for_this_file(model: Model) -> None:
    assert model.golden["file"] == model.path.name
    assert model.golden["file_nbytes"] == model.path.stat().st_size


def test_first_token_equals_both_references(model: Model) -> None:
    wrong = []
    for case, prompt, ref, golden in model.cases():
        ours = model.evaluate(prompt, golden)[0][0]
        if ours != golden["continuation_ids"][0]:
            wrong.append(f"{case}/{ref}: ours {ours}, {ref} {golden['continuation_ids'][0]}")
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("reference", list(MIN_AGREEMENT))
def test_teacher_forced_top1_agreement(model: Model, reference: str) -> None:
    agree = total = 0
    per_case = {}
    for case, prompt, ref, golden in model.cases():
        if ref != reference:
            continue
        region = model.evaluate(prompt, golden)[0]
        hits = sum(a == b for a, b in zip(region, golden["top1"], strict=True))
        per_case[case] = f"{hits}/{len(region)}"
        agree, total = agree + hits, total + len(region)
    assert total >= 150, f"golden file holds only {total} positions for {reference}"
    rate = agree / total
    assert rate >= MIN_AGREEMENT[reference], (
        f"top-1 agreement with {reference} {rate:.1%} < {MIN_AGREEMENT[reference]:.0%}: {per_case}"
    )


def test_top1_agrees_wherever_transformers_is_decisive(model: Model) -> None:
    """transformers computes the file's weights in float32, the nearest to exact; llama.cpp's
    own 8-bit rounding can make it decisive where transformers sees a near-tie (Gemma 3's qa
    prompt, position 2: a 0.03 lead in transformers), so it is not asked here."""
    reference = "transformers"
    wrong, decisive = [], 0
    for case, prompt, ref, golden in model.cases():
        if ref != reference:
            continue
        region = model.evaluate(prompt, golden)[0]
        for i, (ours, theirs) in enumerate(zip(region, golden["top1"], strict=True)):
            top = golden["top5_logits"][i]
            if top[0] - top[1] >= DECISIVE:
                decisive += 1
                if ours != theirs:
                    wrong.append(f"{case} position {i}: ours {ours}, {reference} {theirs}")
    assert decisive >= 100, f"only {decisive} decisive positions for {reference}"
    assert not wrong, "; ".join(wrong)


def test_first_token_logits_near_transformers(model: Model) -> None:
    """Over transformers' top-50 tokens at the first generated position. llama.cpp itself is
    within 0.41 (SmolLM2) and 0.80 (Gemma 3) of transformers there; a wrong norm, RoPE or
    softcap is off by whole units."""
    worst = {}
    for case, prompt, ref, golden in model.cases():
        if ref == "transformers":
            first = golden["first"]
            ours = model.evaluate(prompt, golden)[1][torch.tensor(first["ids"])]
            worst[case] = float((ours - torch.tensor(first["logits"])).abs().max())
    assert max(worst.values()) <= MAX_FIRST_LOGIT_DIFF, f"max |ours - transformers|: {worst}"
