"""The load pipeline around the read/assign seams: parallel loading in file order with bounded
bytes in flight, lazy loading on first use, and the synthetic files and load bench of
benchmarks/make_synthetic.py and warmload/bench/load.py (on a tiny model shape)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from warmload.bench.load import LoadCase, LoadRow, measure, plain_read
from warmload.config import LoadConfig
from warmload.formats.open import open_checkpoint
from warmload.loader import load_model
from warmload.loader.lazy import owner_of, placeholder
from warmload.loader.pipeline import load_in_order

TOKENS = torch.tensor([[3, 17, 9, 41, 0, 25, 7]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        cache = model.new_cache(TOKENS.shape[1])
        return model.compute_logits(model(TOKENS, cache, 0))


def test_synthetic_q4_k_m_follows_llama_cpp_mix(tiny_files):
    with open_checkpoint(tiny_files["q4_k_m"]) as ck:
        types = {name: t.ggml_type for name, t in ck.tensors.items()}
        assert ck.metadata["general.file_type"] == 15
    assert types["token_embd.weight"] == "Q6_K"  # tied: it is the output too
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_v.weight"] == "Q4_K"
    assert types["blk.3.attn_v.weight"] == "Q6_K" and types["blk.3.ffn_down.weight"] == "Q6_K"
    assert types["blk.2.attn_v.weight"] == "Q6_K"  # (2 - 4 // 8) % 3 == 2
    assert types["blk.1.ffn_norm.weight"] == "F32" and types["rope_freqs.weight"] == "F32"


@pytest.mark.parametrize("file_type", ["f16", "q4_k_m"])
def test_synthetic_files_load_to_finite_logits(tiny_files, file_type):
    with open_checkpoint(tiny_files[file_type]) as ck:
        model, stats = load_model(ck)
        out = logits(model)
    assert stats.n_tensors == len(ck.tensors)  # rope_freqs included (read for prepare)
    assert torch.isfinite(out).all() and out.std() > 0


def test_parallel_load_equals_serial(tiny_files):
    with open_checkpoint(tiny_files["q4_k_m"], load_mode="read") as ck:
        serial, s1 = load_model(ck, LoadConfig(load_mode="read", threads=1))
        parallel, s4 = load_model(ck, LoadConfig(load_mode="read", threads=4))
        for (name, a), (_, b) in zip(serial.named_parameters(), parallel.named_parameters()):
            assert torch.equal(a, b), name
    assert (s1.n_tensors, s1.source_nbytes) == (s4.n_tensors, s4.source_nbytes)
    assert s4.stages["transform"].count == s1.stages["transform"].count


@pytest.mark.parametrize("packed", [True, False])
def test_lazy_loads_each_layer_on_first_use(tiny_files, packed):
    """Ready with only the tensors outside the decoder layers (embeddings, output, final norm,
    rope factors: prepare() ties and packs those whole modules); each layer reads its own
    tensors when it first runs."""
    with open_checkpoint(tiny_files["f16"]) as ck:
        eager, _ = load_model(ck, LoadConfig(packed=packed))
        lazy, stats = load_model(ck, LoadConfig(lazy=True, packed=packed))
        outside = [name for name in ck.tensors if not name.startswith("blk.")]
        assert stats.n_tensors == len(outside)
        n_layers = lazy.config.num_hidden_layers
        assert lazy.lazy_weights.pending == sorted(f"model.layers.{i}" for i in range(n_layers))
        layers = [p for n, p in lazy.named_parameters() if n.startswith("model.layers.")]
        assert all(p.untyped_storage().nbytes() <= 4 for p in layers)
        lazy.lazy_weights.materialize("model.layers.0")  # what its first run does
        first = [name for name in ck.tensors if name.startswith("blk.0.")]
        assert stats.n_tensors == len(outside) + len(first)
        assert torch.equal(logits(lazy), logits(eager))
        assert lazy.lazy_weights.pending == []
        assert stats.n_tensors == len(ck.tensors)


def test_lazy_first_calls_from_two_threads_load_once(tiny_files):
    with open_checkpoint(tiny_files["f16"]) as ck:
        lazy, stats = load_model(ck, LoadConfig(lazy=True))
        threads = [threading.Thread(target=lazy.lazy_weights.load_all) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert stats.n_tensors == len(ck.tensors)


def test_owner_and_placeholder():
    assert owner_of("model.layers.12.self_attn.q_proj.weight") == "model.layers.12"
    assert owner_of("model.embed_tokens.weight") == "model.embed_tokens"
    assert owner_of("lm_head.weight") == "lm_head"
    p = placeholder((1000, 64), torch.float32, torch.device("cpu"))
    assert p.shape == (1000, 64) and p.untyped_storage().nbytes() == 4


def test_load_in_order_bounds_bytes_in_flight():
    sizes = [5, 1, 8, 2, 2, 9, 1, 3] * 4
    started: list[int] = []
    assigned: list[int] = []
    in_flight = []

    def read(i: int) -> int:
        started.append(i)
        in_flight.append(sum(sizes[j] for j in started if j not in assigned))
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * 10

    def assign(i: int, result: int) -> None:
        assert result == i * 10
        assigned.append(i)

    peak = load_in_order(range(len(sizes)), sizes.__getitem__, read, assign, 4, 10)
    assert assigned == list(range(len(sizes)))  # plan order whatever finished first
    assert peak <= max(10, max(sizes)) and max(in_flight) <= max(10, max(sizes))


def test_load_in_order_raises_the_first_error():
    def read(i: int) -> int:
        if i in (3, 5):
            raise ValueError(f"bad {i}")
        return i

    done = []
    with pytest.raises(ValueError, match="bad 3"):
        load_in_order(range(8), lambda i: 1, read, lambda i, r: done.append(i), 3, 2)
    assert done == [0, 1, 2]


def test_bench_measure_and_plain_read(tiny_files):
    path = str(tiny_files["f16"])
    assert plain_read(path) == Path(path).stat().st_size
    result = measure(LoadCase(path, "mmap", cold=False, lazy=True, forward=True))
    assert 0 < result["ready_s"] < result["first_s"]
    assert result["stats"]["n_tensors"] == 39  # the forward pass loaded every tensor
    row = LoadRow("tiny", 2_000_000_000, "mmap", "warm", ready_s=[1.0, 2.0, 4.0])
    assert row.median_s == 2.0 and row.gb_per_s == 1.0


def test_cli_load_flags():
    import argparse

    from warmload.cli.generate import add_model_flags, load_options

    p = argparse.ArgumentParser()
    add_model_flags(p)
    options = load_options(p.parse_args(["--lazy", "--warmup", "populate", "--warmup-sync"]))
    assert (options["lazy"], options["warmup"], options["warmup_sync"]) == (True, "populate", True)
    assert "lazy" not in load_options(p.parse_args([]))


def test_lazy_load_failure_keeps_the_hook(tiny_files, monkeypatch):
    """A failed first load raises and leaves the layer pending, never a placeholder in use."""
    import warmload.loader as loader

    with open_checkpoint(tiny_files["f16"]) as ck:
        lazy, _ = load_model(ck, LoadConfig(lazy=True))
        real = loader.read_tensor
        monkeypatch.setattr(loader, "read_tensor", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            lazy.lazy_weights.materialize("model.layers.1")  # as the layer's first run does
        assert "model.layers.1" in lazy.lazy_weights.pending
        monkeypatch.setattr(loader, "read_tensor", real)
        lazy.lazy_weights.materialize("model.layers.1")
        assert "model.layers.1" not in lazy.lazy_weights.pending


def test_bench_source_only_delivers_every_tensor_byte(tiny_files):
    from warmload.bench.load import deliver_bytes

    path = str(tiny_files["q4_k_m"])
    with open_checkpoint(path) as ck:
        expected = sum(t.nbytes for t in ck.tensors.values())
    for mode in ("mmap", "memory", "read"):
        assert deliver_bytes(path, mode) == expected
    result = measure(LoadCase(path, "read", cold=False, source_only=True))
    assert result["ready_s"] > 0 and "stats" not in result


def test_bench_fresh_baselines(tiny_files):
    """The fresh-memory baselines read the whole file into (or fault in) a new buffer."""
    from warmload.bench.load import fresh_pages, fresh_read, run_load_bench

    path = tiny_files["f16"]
    size = path.stat().st_size
    assert fresh_read(str(path)) == size
    buf = fresh_pages(size)
    assert len(buf) == size and not buf.readonly and bytes(buf[-3:]) == b"\0\0\0"
    rows = run_load_bench([path], ["read"], repetitions=2, fresh=True)
    assert [r.case for r in rows] == ["plain read", "fresh pages", "fresh read", "read"]
    assert all(len(r.ready_s) == 2 and not r.skipped for r in rows)


def test_bench_times_warmup_modes(tiny_files):
    from warmload.bench.load import measure_row

    row = measure_row(LoadCase(str(tiny_files["f16"]), "mmap", False, warmup="populate"), 1)
    assert row.case == "warm-up populate" and len(row.ready_s) == 1 and not row.skipped


@pytest.mark.parametrize("mode", ["mmap", "memory", "read"])
def test_eager_load_gives_the_file_memory_back(tiny_files, mode):
    """After a load that copied every tensor the source holds nothing; it reopens on demand."""
    with open_checkpoint(tiny_files["f16"], load_mode=mode) as ck:
        model, _ = load_model(ck, LoadConfig(load_mode=mode))
        assert ck.source._handles == {}
        raw = ck.tensor_bytes("output_norm.weight")  # reopened
        assert len(raw) == 256 * 4 and torch.isfinite(logits(model)).all()
        del raw
