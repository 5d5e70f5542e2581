"""load_model on synthetic GGUF files (written with gguf-py) and on the two real models.

Synthetic: HF-convention random weights are converted the way llama.cpp's convert_hf_to_gguf.py
does (q/k rows permuted for llama, gemma norms stored as 1 + w, Q8_0/F16 quantized with gguf-py)
and the loaded model must give the logits of the HF-convention model holding gguf-py's
dequantized weights. Real models: logits against transformers' float32 goldens
(tests/golden/model_logits_*.json, written by scripts/make_model_goldens.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from warmload import open_checkpoint
from warmload.config import LoadConfig
from warmload.errors import CheckpointError, UnsupportedError, WeightMismatchError
from warmload.loader import load_model, workers_for
from warmload.models import gemma3, llama

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
TOKENS = [3, 17, 9, 41, 0, 25, 25, 7, 33, 12, 48, 5]
Q8_0, F16 = GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16


def random_state(model: torch.nn.Module, seed: int, norm_center: float) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.state_dict().items():
        w = torch.randn(p.shape, generator=g)
        out[name] = (norm_center + 0.1 * w if name.endswith("norm.weight") else 0.3 * w).numpy()
    return out


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: q/k rows for llama.cpp's adjacent-pair rope."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(path: Path, arch: str, meta: dict, tensors: dict[str, np.ndarray]) -> dict:
    """Write a GGUF file; 2-D tensors go Q8_0 (token_embd F16). Returns what a reader
    dequantizes back (gguf-py's numpy reference), by GGUF name."""
    writer = GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    stored = {}
    for name, arr in tensors.items():
        qtype = (F16 if name == "token_embd.weight" else Q8_0) if arr.ndim == 2 else None
        if qtype is None:
            writer.add_tensor(name, arr.astype(np.float32))
            stored[name] = arr.astype(np.float32)
        else:
            data = quants.quantize(arr.astype(np.float32), qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            stored[name] = quants.dequantize(data, qtype).reshape(arr.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def to_gguf(sd: dict[str, np.ndarray], table: dict[str, str], n_layers: int) -> dict:
    names = {}
    for src, dst in table.items():
        for i in range(n_layers) if "{i}" in src else [0]:
            names[dst.format(i=i)] = src.format(i=i)
    return {names[k]: v for k, v in sd.items()}


LLAMA = llama.LlamaConfig(
    vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=2**-17, rope_theta=500.0,
    max_position_embeddings=64,
)  # fmt: skip
LLAMA_META = {
    "block_count": 2, "context_length": 64, "embedding_length": 64, "feed_forward_length": 96,
    "attention.head_count": 4, "attention.head_count_kv": 2, "rope.freq_base": 500.0,
    "attention.layer_norm_rms_epsilon": 2**-17, "rope.dimension_count": 16,
}  # fmt: skip


def llama_file(tmp_path: Path, tied: bool, rope_freqs: np.ndarray | None = None):
    """A synthetic llama GGUF and the HF-convention reference model of its stored weights."""
    cfg = replace(LLAMA, tie_word_embeddings=tied)
    sd = random_state(llama.build_model(cfg), 7, 1.0)
    if tied:
        del sd["lm_head.weight"]
    g = to_gguf(sd, llama.GGUF_TENSOR_NAMES, cfg.num_hidden_layers)
    for i in range(cfg.num_hidden_layers):
        g[f"blk.{i}.attn_q.weight"] = permute(g[f"blk.{i}.attn_q.weight"], 4)
        g[f"blk.{i}.attn_k.weight"] = permute(g[f"blk.{i}.attn_k.weight"], 2)
    if rope_freqs is not None:
        g["rope_freqs.weight"] = rope_freqs
    stored = write_gguf(tmp_path / "tiny-llama.gguf", "llama", LLAMA_META, g)
    for i in range(cfg.num_hidden_layers):  # undo the permutation: back to HF convention
        for name, heads in ((f"blk.{i}.attn_q.weight", 4), (f"blk.{i}.attn_k.weight", 2)):
            w = stored[name]
            stored[name] = (
                w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
            )
    ref = reference_model(llama.build_model(cfg), llama.GGUF_TENSOR_NAMES, stored, cfg)
    ref.prepare(None if rope_freqs is None else torch.from_numpy(rope_freqs))
    return tmp_path / "tiny-llama.gguf", ref


def reference_model(model, table, stored, cfg):
    sd = {k: torch.from_numpy(v) for k, v in to_hf(stored, table, cfg.num_hidden_layers).items()}
    model.load_state_dict(sd, strict=False, assign=True)
    return model


def to_hf(stored: dict, table: dict[str, str], n_layers: int) -> dict:
    names = {}
    for src, dst in table.items():
        for i in range(n_layers) if "{i}" in src else [0]:
            names[src.format(i=i)] = dst.format(i=i)
    return {names[k]: v for k, v in stored.items() if k in names}


def logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        cache = model.new_cache(len(tokens))
        return model.compute_logits(model(torch.tensor([tokens]), cache, 0))[0]


def shares_weight(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two layers use the same weight tensor (float or packed blocks)."""
    name = "blocks" if hasattr(a, "blocks") else "weight"
    return getattr(a, name) is getattr(b, name, None)


def assert_close_to_reference(got: torch.Tensor, want: torch.Tensor, packed: bool) -> None:
    """Dequantized weights reproduce the float reference; packed kernels quantize activations
    to 8 bits per block of 32 (as llama.cpp): a few % relative error on these random weights."""
    if packed:
        rel = ((got - want).norm() / want.norm()).item()
        assert rel <= 0.05
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    else:
        assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("tied", [True, False])
def test_llama_gguf_loads_to_the_reference(tmp_path: Path, tied: bool, packed: bool):
    path, ref = llama_file(tmp_path, tied)
    with open_checkpoint(path) as ck:
        model, stats = load_model(ck, LoadConfig(packed=packed))
        assert model.config == replace(LLAMA, tie_word_embeddings=tied, rope_style="interleaved")
        assert shares_weight(model.lm_head, model.model.embed_tokens) == tied
        assert_close_to_reference(logits(model, TOKENS), logits(ref, TOKENS), packed)
        assert stats.n_tensors == len(ck.tensors)
        assert stats.source_nbytes == sum(t.nbytes for t in ck.tensors.values())
    assert all(not p.requires_grad for p in model.parameters())


def test_rope_freqs_tensor_divides_frequencies(tmp_path: Path):
    factors = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 16.0, 32.0], dtype=np.float32)
    path, ref = llama_file(tmp_path, True, factors)
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck, LoadConfig(packed=False))
        got = logits(model, TOKENS)
    inv = 500.0 ** (-np.arange(0, 16, 2) / 16) / factors
    angles = np.outer(np.arange(len(TOKENS)), inv)
    (table,) = model.rope.tables  # interleaved float32: cos + i sin
    assert np.allclose(table[: len(TOKENS)].real.numpy(), np.cos(angles), atol=1e-6)
    assert np.allclose(table[: len(TOKENS)].imag.numpy(), np.sin(angles), atol=1e-6)
    assert torch.allclose(got, logits(ref, TOKENS), atol=1e-4)


GEMMA_META = {
    "block_count": 6, "context_length": 128, "embedding_length": 32, "feed_forward_length": 64,
    "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 32,
    "attention.value_length": 32, "rope.freq_base": 20000.0, "attention.sliding_window": 4,
    "attention.layer_norm_rms_epsilon": 2**-20,
}  # fmt: skip


@pytest.mark.parametrize("packed", [True, False])
def test_gemma3_gguf_loads_to_the_reference(tmp_path: Path, packed: bool):
    """llama.cpp's converter stores gemma norms as 1 + w; the reference uses HF's (1 + w)."""
    cfg = gemma3.Gemma3Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, rope_theta=20000.0,
        max_position_embeddings=128, sliding_window=4, query_pre_attn_scalar=32.0,
        rms_norm_eps=2**-20,
    )  # fmt: skip
    sd = random_state(gemma3.build_model(cfg), 8, 0.0)
    del sd["lm_head.weight"]
    g = to_gguf(sd, gemma3.GGUF_TENSOR_NAMES, 6)
    g = {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in g.items()}
    stored = write_gguf(tmp_path / "tiny-gemma3.gguf", "gemma3", GEMMA_META, g)
    stored = {k: v - 1.0 if k.endswith("norm.weight") else v for k, v in stored.items()}
    ref = reference_model(gemma3.build_model(cfg), gemma3.GGUF_TENSOR_NAMES, stored, cfg)
    ref.prepare()
    with open_checkpoint(tmp_path / "tiny-gemma3.gguf") as ck:
        model, _ = load_model(ck, LoadConfig(packed=packed))
    assert model.config == replace(cfg, norm_weight_offset=0.0)
    assert model.config.layer_types[4:] == ("sliding_attention", "full_attention")
    assert_close_to_reference(logits(model, TOKENS), logits(ref, TOKENS), packed)


class SpySource:
    """Counts tensor reads, to prove errors come before any byte is read."""

    def __init__(self, inner) -> None:
        self.inner, self.reads = inner, 0

    def view(self, *args):
        self.reads += 1
        return self.inner.view(*args)

    def close(self) -> None:
        self.inner.close()


def broken(tmp_path: Path, change) -> tuple[Exception, int]:
    path, _ = llama_file(tmp_path, tied=True)
    with open_checkpoint(path) as ck:
        ck.source = spy = SpySource(ck.source)
        change(ck)
        with pytest.raises((CheckpointError, UnsupportedError, WeightMismatchError)) as err:
            load_model(ck)
    return err.value, spy.reads


def test_wrong_architecture_lists_supported(tmp_path: Path):
    err, reads = broken(tmp_path, lambda ck: ck.metadata.update({"general.architecture": "qwen9"}))
    assert isinstance(err, UnsupportedError) and reads == 0
    assert "architecture 'qwen9' is not supported (supported: " in str(err)
    assert all(f" {arch}," in str(err) for arch in ("gemma3", "llama"))


def test_bad_metadata_is_named(tmp_path: Path):
    err, reads = broken(tmp_path, lambda ck: ck.metadata.pop("llama.block_count"))
    assert isinstance(err, CheckpointError) and reads == 0
    assert "metadata key 'llama.block_count' is missing" in str(err)
    err, reads = broken(
        tmp_path, lambda ck: ck.metadata.update({"llama.rope.scaling.type": "yarn"})
    )
    assert isinstance(err, UnsupportedError) and reads == 0
    assert "rope scaling 'yarn' is not supported" in str(err)


def test_missing_unexpected_and_misshaped_tensors_are_listed_sorted(tmp_path: Path):
    def change(ck):
        del ck.tensors["blk.1.ffn_up.weight"], ck.tensors["blk.0.ffn_up.weight"]
        ck.tensors["blk.0.attn_q.bias"] = replace(
            ck.tensors["output_norm.weight"], name="blk.0.attn_q.bias"
        )
        ck.tensors["blk.1.attn_k.weight"] = replace(
            ck.tensors["blk.1.attn_k.weight"], shape=(64, 64)
        )

    err, reads = broken(tmp_path, change)
    assert isinstance(err, WeightMismatchError) and reads == 0
    msg = str(err)
    assert "2 missing: blk.0.ffn_up.weight, blk.1.ffn_up.weight" in msg
    assert "1 unexpected: blk.0.attn_q.bias" in msg
    assert "1 with the wrong shape: blk.1.attn_k.weight (64, 64) != (32, 64)" in msg


def test_unsupported_tensor_type_fails_before_reading(tmp_path: Path):
    def change(ck):
        ck.tensors["blk.0.ffn_up.weight"] = replace(
            ck.tensors["blk.0.ffn_up.weight"], ggml_type="IQ1_S"
        )

    err, reads = broken(tmp_path, change)
    assert isinstance(err, UnsupportedError) and reads == 0
    assert "blk.0.ffn_up.weight (IQ1_S)" in str(err)


@pytest.mark.parametrize("packed", [True, False])
def test_load_stats_are_measured(tmp_path: Path, packed: bool):
    path, _ = llama_file(tmp_path, tied=False)
    with open_checkpoint(path) as ck:
        _, stats = load_model(ck, LoadConfig(packed=packed))
        matrices = sum(t.nbytes for t in ck.tensors.values() if len(t.shape) == 2)
    d = stats.as_dict()
    for stage in ("config", "build", "plan", "source", "transform", "assign", "prepare", "verify"):
        assert d["stages"][stage]["seconds"] >= 0, stage
    assert d["stages"]["transform"]["count"] == stats.n_tensors == 21
    # caller-thread stages add up to at most the wall time; source/transform run on the pool
    serial = ("config", "build", "plan", "assign", "prepare", "verify")
    assert 0 < sum(d["stages"][s]["seconds"] for s in serial) <= d["total_seconds"]
    pooled = d["stages"]["source"]["seconds"] + d["stages"]["transform"]["seconds"]
    assert pooled <= d["total_seconds"] * workers_for(LoadConfig())
    floats = 4 * sum(v.numel() for v in llama.build_model(LLAMA).state_dict().values())
    if packed:  # matrices keep their file bytes; only the 1-D norms become float32
        norms = 4 * sum(t.n_elements for t in ck.tensors.values() if len(t.shape) == 1)
        assert stats.param_nbytes == matrices + norms < floats
    else:
        assert stats.param_nbytes == floats
    assert "transform" in stats.summary() and "21 tensors" in stats.summary()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["smollm2", "gemma3-270m"])
def test_real_model_matches_transformers_golden(model_name: str, request):
    """With weights dequantized at load, top-1 at every position equals transformers' float32
    run of the same GGUF and the top-5 logits agree to 2e-3 (measured: < 1e-4). (The packed
    kernels' 8-bit activations are checked against the references in test_golden.py.)"""
    golden = json.loads((GOLDEN_DIR / f"model_logits_{model_name}.json").read_text())
    path = request.getfixturevalue("smollm2_path" if model_name == "smollm2" else "gemma3_path")
    with open_checkpoint(path) as ck:
        model, _ = load_model(ck, LoadConfig(packed=False))
        got = logits(model, golden["token_ids"])
    top_ids = torch.tensor(golden["top_ids"])
    assert got.argmax(-1).tolist() == top_ids[:, 0].tolist()
    diff = (got.gather(1, top_ids) - torch.tensor(golden["top_logits"])).abs().max()
    assert diff < 2e-3, float(diff)


def test_a_mapped_file_with_little_to_convert_loads_on_one_thread():
    from warmload.loader import SERIAL_BELOW_BYTES
    from warmload.loader.plan import TensorLoad

    packed = [TensorLoad("w", "w", "Q4_0", (64, 64), 1 << 30, "pack")]
    small = [TensorLoad("n", "n", "F32", (64,), 256)]
    big = [TensorLoad("e", "e", "F16", (64, 64), SERIAL_BELOW_BYTES)]
    cfg = LoadConfig(threads=2)
    assert workers_for(cfg, packed + small) == 1  # views of the mapping: nothing to share
    assert workers_for(cfg, packed + big) == 2  # a real conversion: the pool
    assert workers_for(LoadConfig(threads=2, load_mode="memory"), packed) == 2  # copies
