"""The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2: q/k/v biases, qwen2 pre-tokenizer,
151,936-token vocabulary, the packaged `qwen2.5-coder-0.5b`).

Ground truth: llama.cpp's token ids of every golden prompt (tests/golden/generation_*.json,
made by scripts/make_goldens.py), transformers' float32 logits of the dequantized file
(tests/golden/model_logits_*.json, scripts/make_model_goldens.py); the teacher-forced agreement
with both references is tests/test_golden.py's. Here: the tokenizer, the weights dequantized
at load, the one-call decode plan (biases in C) against the modules, and the prompt from the
issue producing Python that runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import warmload
from warmload import kernels
from warmload.catalog import resolve_model_path
from warmload.config import LoadConfig
from warmload.formats.open import open_checkpoint
from warmload.loader import load_model
from warmload.models import fused

NAME = "qwen2.5-coder-0.5b"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

pytestmark = pytest.mark.slow  # loads a 0.5B model


@pytest.fixture(scope="module")
def qwen_path() -> Path:
    return resolve_model_path(NAME)


@pytest.fixture(scope="module")
def engine(qwen_path: Path):
    return warmload.load(qwen_path, threads=2)


def test_tokenizer_matches_llama_cpp(engine) -> None:
    """Every golden prompt (prose, code, unicode, chat with special tokens) tokenizes to
    llama.cpp's ids: the qwen2 pre-tokenizer and the added tokens."""
    golden = json.loads((GOLDEN_DIR / f"generation_{NAME}.json").read_text())
    for case, text in golden["prompt_texts"].items():
        assert engine.encode_rendered(text) == golden["cases"][case]["prompt_ids"], case


def test_dequantized_weights_match_transformers(qwen_path: Path) -> None:
    """Weights dequantized at load (float32 modules): top-1 at every position equals
    transformers' float32 run of the same file, top-5 logits within 2e-3."""
    golden = json.loads((GOLDEN_DIR / f"model_logits_{NAME}.json").read_text())
    assert golden["file"] == qwen_path.name
    with open_checkpoint(qwen_path) as ck:
        model, _ = load_model(ck, LoadConfig(packed=False))
        ids = torch.tensor([golden["token_ids"]])
        with torch.no_grad():
            got = model.compute_logits(model(ids, model.new_cache(ids.shape[1]), 0))[0]
    top_ids = torch.tensor(golden["top_ids"])
    assert got.argmax(-1).tolist() == top_ids[:, 0].tolist()
    diff = (got.gather(1, top_ids) - torch.tensor(golden["top_logits"])).abs().max()
    assert diff < 2e-3, float(diff)


def test_decode_runs_on_the_plan_with_biases(engine) -> None:
    """Packed Q4_K/Q5_0/Q6_K/Q8_0 matrices, the one-call plan (q/k/v biases added in C), and
    the plan's step equals the modules' bit for bit."""
    model = engine.model
    assert fused.plan_refusal(model) is None
    assert all(s.qkv_bias for s in model.layer_specs)
    prompt = torch.tensor([engine.encode_rendered("def add(a, b):\n    return")])
    planned, modules = model.new_cache(32), model.new_cache(32)
    assert fused.decode_plan(model, planned) is not None
    with torch.no_grad():
        model(prompt, planned, 0)
        model(prompt, modules, 0)
        step = torch.tensor([[13]])
        ours = model(step, planned, prompt.shape[1])
        model.__dict__["_plans"][fused.cache_key(modules)] = None  # this cache: the modules
        ref = model(step, modules, prompt.shape[1])
    assert torch.equal(ours, ref)


def test_writes_a_working_string_reverser(engine) -> None:
    """The issue's prompt, greedy: the answer's code block defines a function that reverses."""
    out = engine.chat(
        [{"role": "user", "content": "Write a Python function that reverses a string"}],
        temperature=0.0,
        max_tokens=160,
    )
    block = re.search(r"```(?:python)?\n(.*?)```", out.text, re.S)
    assert block, out.text
    namespace: dict = {}
    exec(block.group(1), namespace)  # the model's own code, run on a string
    functions = [v for k, v in namespace.items() if callable(v) and not k.startswith("__")]
    assert any(f("warmload") == "daolmraw" for f in functions), block.group(1)


@pytest.mark.skipif(not kernels.DECODE_TAKES_GEMM, reason="ragged steps need AVX-512 VNNI")
def test_a_ragged_batch_step_equals_its_rows_run_apart(engine) -> None:
    """The server's batch step (two rows decoding, a third row's prompt chunk, one fused pass)
    gives the bits of the same work run apart."""
    model = engine.model
    prompts = [list(range(100, 110)), list(range(200, 205))]
    chunk = list(range(300, 317))

    def prefilled():
        cache = model.new_cache(64, 3)
        for row, prompt in enumerate(prompts):
            model(torch.tensor([prompt]), cache.rows(row, row + 1), 0)
        return cache

    with torch.inference_mode():
        cache = prefilled()
        steps = model(torch.tensor([[5], [6]]), cache.rows(0, 2), torch.tensor([10, 5]))
        alone = model(torch.tensor([chunk]), cache.rows(2, 3), 0)
        apart = model.compute_logits(torch.cat([steps[:, 0], alone[0]]))
        cache = prefilled()
        assert fused.ragged_plan(model, cache) is not None
        tokens = torch.tensor([5, 6, *chunk])
        rows = torch.tensor([0, 1] + [2] * len(chunk))
        positions = torch.tensor([10, 5, *range(len(chunk))])
        together = model.compute_logits(fused.forward_ragged(model, tokens, cache, rows, positions))
    assert torch.equal(together, apart)
