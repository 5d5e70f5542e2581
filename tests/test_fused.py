"""The one-call decode plan (models/fused.py, kernels/decode.c) against the module path.

Both run the same C kernels for every step of a layer (products, RMSNorm, attention, gated
activation), so the plan must give the module path's logits bit for bit at every decode step,
on a tiny packed model and on both real models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_loader import llama_file

from warmload import kernels, open_checkpoint
from warmload.config import LoadConfig
from warmload.engine import load_engine
from warmload.loader import load_model
from warmload.models import fused


@pytest.fixture(autouse=True)
def integer_kernels(kernel_variant: str) -> str:
    """Every test once per kernel variant; a plan runs the integer decode kernels, which need
    AVX2 (the generic variant dequantizes everything)."""
    if "int8" not in kernels.KERNEL_TYPES.values():
        pytest.skip(f"no integer kernels in the {kernel_variant} variant")
    return kernel_variant


def decode_logits(model, prompt: list[int], steps: list[int], planned: bool, monkeypatch):
    if not planned:
        monkeypatch.setattr(fused, "_build", lambda model, cache: None)
    model.__dict__.pop("_plans", None)
    with torch.inference_mode():
        cache = model.new_cache(len(prompt) + len(steps))
        model(torch.tensor([prompt]), cache, 0)
        rows = []
        for i, token in enumerate(steps):
            hidden = model(torch.tensor([[token]]), cache, len(prompt) + i)
            rows.append(model.compute_logits(hidden)[0, -1])
    monkeypatch.undo()
    return torch.stack(rows)


def test_plan_matches_modules_on_a_tiny_packed_llama(tmp_path: Path, monkeypatch):
    path, _ = llama_file(tmp_path, tied=False)  # Q8_0 matrices
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck)
    prompt, steps = [3, 17, 9, 41], [0, 25, 25, 7, 33, 12]
    planned = decode_logits(model, prompt, steps, True, monkeypatch)
    assert [p for p in model._plans.values() if p is not None]
    modules = decode_logits(model, prompt, steps, False, monkeypatch)
    assert torch.equal(planned, modules)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_plan_matches_modules_on_the_real_models(name: str, request, monkeypatch):
    model = load_engine(request.getfixturevalue(name)).model
    prompt, steps = list(range(300, 320)), list(range(500, 512))
    planned = decode_logits(model, prompt, steps, True, monkeypatch)
    modules = decode_logits(model, prompt, steps, False, monkeypatch)
    assert torch.equal(planned, modules)


def test_no_plan_for_unpacked_weights(tmp_path: Path):
    path, _ = llama_file(tmp_path, tied=True)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck, LoadConfig(packed=False))
        packed, _ = load_model(ck)
    assert fused.decode_plan(model, model.new_cache(8)) is None
    assert fused.decode_plan(packed, packed.new_cache(8)) is not None


@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_batched_plan_matches_modules(name: str, request, monkeypatch):
    """Rows at their own positions (the server's batched decoding), through the plan of the
    cache's row range, equal the module path bit for bit."""
    model = load_engine(request.getfixturevalue(name)).model
    prompts = [list(range(100, 110)), list(range(200, 205)), list(range(300, 317))]

    def step(planned: bool) -> torch.Tensor:
        if not planned:
            monkeypatch.setattr(fused, "_build", lambda model, cache: None)
        model.__dict__.pop("_plans", None)
        with torch.inference_mode():
            cache = model.new_cache(64, 4)
            for row, prompt in enumerate(prompts):
                model(torch.tensor([prompt]), cache.rows(row + 1, row + 2), 0)
            positions = torch.tensor([len(p) for p in prompts])
            tokens = torch.tensor([[5], [6], [7]])
            out = model.compute_logits(model(tokens, cache.rows(1, 4), positions))
        monkeypatch.undo()
        return out

    planned = step(True)
    assert [p for p in model._plans.values() if p is not None and p.cache.batch_size == 3]
    assert torch.equal(planned, step(False))


def chunk_logits(model, prefix: list[int], chunk: list[int], planned: bool, monkeypatch):
    """Logits of every token of `chunk`, run as one forward after `prefix` (by the modules)."""
    model.__dict__.pop("_plans", None)
    with torch.inference_mode():
        cache = model.new_cache(len(prefix) + len(chunk))
        if prefix:
            model(torch.tensor([prefix]), cache, 0)  # > CHUNK_TOKENS: always the modules
        if not planned:
            monkeypatch.setattr(fused, "_build", lambda model, cache: None)
        out = model.compute_logits(model(torch.tensor([chunk]), cache, len(prefix)))[0]
    monkeypatch.undo()
    return out


@pytest.fixture
def chunk_plans(integer_kernels: str) -> None:
    if not kernels.DECODE_TAKES_GEMM:
        pytest.skip(f"plans run no prompt chunks in the {integer_kernels} variant")


needs_chunk_plans = pytest.mark.usefixtures("chunk_plans")


@needs_chunk_plans
def test_prompt_chunks_through_the_plan_match_modules(tmp_path: Path, monkeypatch):
    path, _ = llama_file(tmp_path, tied=False)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck)
    prefix = [(7 * i) % 50 for i in range(fused.CHUNK_TOKENS + 1)]
    for chunk in ([3, 17, 9, 41, 0, 25], [11] * fused.CHUNK_TOKENS):
        planned = chunk_logits(model, prefix, chunk, True, monkeypatch)
        assert [p for p in model._plans.values() if p is not None and p.chunk_tokens]
        assert torch.equal(planned, chunk_logits(model, prefix, chunk, False, monkeypatch))


@needs_chunk_plans
@pytest.mark.slow
def test_gemma3_prompt_chunks_through_the_plan_match_modules_past_the_window(
    gemma3_path: Path, monkeypatch
):
    """A chunk whose tokens see past the sliding window (512) in its local layers."""
    model = load_engine(gemma3_path).model
    prefix, chunk = list(range(1000, 1530)), list(range(700, 720))
    planned = chunk_logits(model, prefix, chunk, True, monkeypatch)
    assert torch.equal(planned, chunk_logits(model, prefix, chunk, False, monkeypatch))


@needs_chunk_plans
def test_a_plan_refuses_chunks_it_cannot_take(tmp_path: Path):
    path, _ = llama_file(tmp_path, tied=False)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck)
    hidden = model.config.hidden_size
    one_row = fused.decode_plan(model, model.new_cache(256))
    rows = fused.decode_plan(model, model.new_cache(256, 2))
    assert one_row.chunk_tokens == fused.CHUNK_TOKENS and rows.chunk_tokens == fused.RAGGED_TOKENS
    too_long = torch.zeros(1, fused.CHUNK_TOKENS + 1, hidden)
    with pytest.raises(ValueError, match="cannot take"):
        one_row.chunk(too_long, 0)
    with pytest.raises(ValueError, match="cannot take"):
        rows.chunk(torch.zeros(1, 4, hidden), 0)
    with pytest.raises(ValueError, match="outside the KV cache"):
        one_row.chunk(torch.zeros(1, 8, hidden), 250)


@needs_chunk_plans
@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_a_ragged_step_equals_its_rows_run_apart(name: str, request):
    """Two rows' decode tokens and a third row's prompt chunk in one ragged step (the batch
    runner's step) give the bits of the decode step and the chunk run apart."""
    model = load_engine(request.getfixturevalue(name)).model
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


@needs_chunk_plans
def test_a_plan_refuses_ragged_steps_it_cannot_take(tmp_path: Path):
    path, _ = llama_file(tmp_path, tied=False)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck)
    plan = fused.ragged_plan(model, model.new_cache(32, 2))
    x = torch.zeros(3, model.config.hidden_size)
    with pytest.raises(ValueError, match="cannot take"):
        plan.ragged(x, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))  # no row 2
    with pytest.raises(ValueError, match="outside the KV cache"):
        plan.ragged(x, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 32]))
    assert fused.ragged_plan(model, model.new_cache(32, 1)) is None


def requantized(m, ggml_type: str) -> torch.Tensor:
    """m's weights as `ggml_type` blocks (IQ4_XS: random blocks with valid scales; the
    quantizer does not write IQ4)."""
    import numpy as np

    from warmload.quant.dequant import dequantize
    from warmload.quant.quantize import quantize

    if ggml_type == "IQ4_XS":
        rng = np.random.default_rng(m.out_features)
        raw = rng.integers(0, 256, (m.out_features * m.in_features // 256, 136), dtype=np.uint8)
        raw[:, :2] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
        return torch.from_numpy(raw).view(m.out_features, -1)
    w = dequantize(m.blocks, m.ggml_type, (m.out_features, m.in_features))
    return torch.from_numpy(quantize(w.numpy(), ggml_type, threads=1))


_PROJECTIONS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)  # the tiny llama's separate matrices


@pytest.mark.parametrize("ggml_type", ["Q2_K", "Q3_K", "IQ4_XS"])
def test_the_plan_takes_the_rarer_integer_types(ggml_type: str, tiny_files, monkeypatch):
    """Q2_K (mins per 16 values), Q3_K and IQ4 matrices run in the one-call plan too, with the
    modules' bits."""
    from warmload.quant.matmul import QuantLinear

    with open_checkpoint(tiny_files["q4_k_m"]) as ck:
        model, _ = load_model(ck)
    for layer in model.model.layers:
        for block, name in _PROJECTIONS:
            parent = getattr(layer, block)
            m = getattr(parent, name)
            setattr(parent, name, QuantLinear(requantized(m, ggml_type), ggml_type, m.in_features))
    model.__dict__.pop("_plan_weights", None)
    prompt, steps = [3, 17, 9, 41], [0, 25, 25, 7]
    planned = decode_logits(model, prompt, steps, True, monkeypatch)
    assert [p for p in model._plans.values() if p is not None]
    modules = decode_logits(model, prompt, steps, False, monkeypatch)
    assert torch.equal(planned, modules)
