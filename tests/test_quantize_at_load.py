"""Quantize at load, cached (warmload/loader/quantize_at_load.py, weight_cache.py): the entry
is byte-identical to `warmload quantize` and gives the same logits; the second load maps it
without quantizing; corrupt, truncated and stale entries are rebuilt with a warning; two
processes build once; an unwritable cache degrades; the cache is LRU-bounded and listed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import warmload
import warmload.quantizer
from warmload.config import LoadConfig
from warmload.errors import RequestError
from warmload.formats.gguf_write import TensorSpec, encode_kv, read_raw_kv, write_gguf
from warmload.loader import weight_cache
from warmload.loader.quantize_at_load import prepare_quantized, quantize_type
from warmload.quant.quantize import quantize
from warmload.quantizer import quantize_checkpoint

N_LAYER, N_EMBD, N_FF, N_HEAD, N_KV = 2, 256, 512, 4, 2
REPLACED = {"llama.block_count": N_LAYER, "llama.embedding_length": N_EMBD,
            "llama.feed_forward_length": N_FF, "llama.attention.head_count": N_HEAD,
            "llama.attention.head_count_kv": N_KV, "llama.rope.dimension_count": N_EMBD // N_HEAD,
            "general.file_type": 1}  # fmt: skip
LOG = "warmload.loader.quantize_at_load"


def write_tiny_f16(path: Path, smollm2: Path, seed: int = 0) -> Path:
    """A random 2-layer llama in F16 (norms F32) with SmolLM2's tokenizer and chat template,
    embeddings tied: a model warmload.load() runs end to end."""
    kv = [item for item in read_raw_kv(smollm2)
          if item.key not in REPLACED and item.key != "general.quantization_version"]  # fmt: skip
    kv += [encode_kv(k, v) for k, v in REPLACED.items()]
    n_vocab = int(warmload.open_checkpoint(smollm2).tensors["token_embd.weight"].shape[0])
    head = N_EMBD // N_HEAD
    shapes = {"token_embd.weight": (n_vocab, N_EMBD), "output_norm.weight": (N_EMBD,)}
    for i in range(N_LAYER):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (N_EMBD,), b + "ffn_norm.weight": (N_EMBD,),
            b + "attn_q.weight": (N_EMBD, N_EMBD), b + "attn_k.weight": (N_KV * head, N_EMBD),
            b + "attn_v.weight": (N_KV * head, N_EMBD), b + "attn_output.weight": (N_EMBD, N_EMBD),
            b + "ffn_gate.weight": (N_FF, N_EMBD), b + "ffn_up.weight": (N_FF, N_EMBD),
            b + "ffn_down.weight": (N_EMBD, N_FF),
        }  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shape in shapes.items():
        if len(shape) == 1:
            x = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            tensors.append((TensorSpec(name, shape, "F32"), x))
        else:
            x = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            tensors.append((TensorSpec(name, shape, "F16"), quantize(x, "F16")))
    write_gguf(path, kv, tensors)
    return path


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    return write_tiny_f16(tmp_path_factory.mktemp("src") / "tiny-f16.gguf", smollm2_path)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / weight_cache.CACHE_NAME


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the quantizer, by output file name."""
    calls: list[str] = []
    real = warmload.quantizer.quantize_checkpoint

    def counting(src, dst, *args, **kwargs):
        calls.append(Path(dst).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(warmload.quantizer, "quantize_checkpoint", counting)
    return calls


def reference(src: Path, folder: Path, qtype: str) -> bytes:
    out = folder / f"ref-{qtype}.gguf"
    quantize_checkpoint(src, out, qtype, write_sha256_file=False)
    return out.read_bytes()


@pytest.mark.parametrize(("asked", "qtype"), [("Q8_0", "Q8_0"), ("q4_k", "Q4_K_M")])
def test_entry_is_the_quantizer_output(tiny_f16, tmp_path, cache, builds, asked, qtype):
    got = prepare_quantized(tiny_f16, asked)
    assert (got.built, got.cached, got.qtype) == (True, True, qtype)
    assert got.path.parent == cache
    assert got.path.read_bytes() == reference(tiny_f16, tmp_path, qtype)
    assert len(builds) == 1
    again = prepare_quantized(tiny_f16, asked)  # a hit: no quantizer call
    assert (again.built, again.cached, again.path) == (False, True, got.path)
    assert len(builds) == 1


def test_load_gives_the_quantized_files_logits(tiny_f16, tmp_path, builds):
    ref = tmp_path / "ref.gguf"
    quantize_checkpoint(tiny_f16, ref, "Q4_K_M", write_sha256_file=False)
    ids = [1, 504, 3458, 1219, 28, 253, 3]
    want = warmload.load(ref, threads=1).logits(ids)
    first = warmload.load(tiny_f16, quantize="Q4_K_M", threads=1)
    second = warmload.load(tiny_f16, quantize="Q4_K_M", threads=1)
    assert len(builds) == 1 and first.path == second.path != tiny_f16
    assert first.path.read_bytes() == ref.read_bytes()
    for engine in (first, second):
        assert np.array_equal(engine.logits(ids).numpy(), want.numpy())
    f16 = warmload.load(tiny_f16, threads=1).logits(ids)  # the source differs, a little
    assert not np.array_equal(f16.numpy(), want.numpy())
    assert np.corrcoef(f16.numpy().ravel(), want.numpy().ravel())[0, 1] > 0.9


@pytest.mark.parametrize("damage", ["flip-header", "truncate", "flip-tail", "no-record"])
def test_damaged_entry_is_rebuilt_with_one_warning(tiny_f16, builds, caplog, damage):
    entry = prepare_quantized(tiny_f16, "Q8_0").path
    good = entry.read_bytes()
    data = bytearray(good)
    if damage == "flip-header":
        data[40] ^= 0x20
    elif damage == "flip-tail":
        data[-5] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    else:
        entry.with_suffix(".json").unlink()
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=LOG):
        again = prepare_quantized(tiny_f16, "Q8_0")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0].getMessage()
    assert again.built and again.path == entry and entry.read_bytes() == good
    assert len(builds) == 2
    caplog.clear()
    assert not prepare_quantized(tiny_f16, "Q8_0").built and not caplog.records


def test_changed_source_invalidates(tiny_f16, tmp_path, smollm2_path, builds, caplog):
    src = tmp_path / "model.gguf"
    src.write_bytes(tiny_f16.read_bytes())
    first = prepare_quantized(src, "Q8_0")
    old = first.path.read_bytes()
    write_tiny_f16(src, smollm2_path, seed=1)  # same size, other weights, newer mtime
    with caplog.at_level(logging.WARNING, logger=LOG):
        second = prepare_quantized(src, "Q8_0")
    assert second.built and second.path == first.path and len(builds) == 2
    assert "source changed" in caplog.text
    new = second.path.read_bytes()
    assert new != old and new == reference(src, tmp_path, "Q8_0")
    # same bytes again, but a header byte changed in place with the mtime put back
    st = src.stat()
    at = src.read_bytes().index(b"general.name") + 11  # the key becomes general.namd
    with open(src, "r+b") as f:
        f.seek(at)
        f.write(b"d")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    identity = weight_cache.source_identity(src)
    assert identity.mtime_ns == st.st_mtime_ns and identity.nbytes == st.st_size
    record = json.loads(second.path.with_suffix(".json").read_text())
    assert record["source"]["header_sha256"] != identity.header_sha256
    assert prepare_quantized(src, "Q8_0").built and len(builds) == 3


def test_two_processes_build_once(tiny_f16, tmp_path, cache):
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        import warmload.quantizer
        real = warmload.quantizer.quantize_checkpoint
        def slow(*a, **k):
            time.sleep(0.5)  # hold the lock long enough for the other process to wait on it
            return real(*a, **k)
        warmload.quantizer.quantize_checkpoint = slow
        from warmload.loader.quantize_at_load import prepare_quantized
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        got = prepare_quantized(Path({str(tiny_f16)!r}), "Q8_0", threads=1)
        print(json.dumps({{"built": got.built, "path": str(got.path)}}))
    """)
    env = {**os.environ, "WARMLOAD_CACHE_DIR": str(cache.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    time.sleep(2.0)  # both imported and polling
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == reference(tiny_f16, tmp_path, "Q8_0")


def test_unwritable_cache_degrades_to_a_temporary_file(tiny_f16, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger=LOG):
        got = prepare_quantized(tiny_f16, "Q8_0")
    assert len(caplog.records) == 1 and "cannot be written" in caplog.text
    assert got.built and not got.cached and got.path.exists() and blocker.is_file()
    assert got.path.read_bytes() == reference(tiny_f16, tmp_path, "Q8_0")


def test_no_cache_option_writes_nothing_to_the_cache(tiny_f16, cache):
    got = prepare_quantized(tiny_f16, "Q8_0", use_cache=False)
    assert got.built and not got.cached and not cache.exists()


def test_already_quantized_model_loads_as_is_with_a_warning(smollm2_path, builds, caplog):
    with caplog.at_level(logging.WARNING, logger=LOG):
        got = prepare_quantized(smollm2_path, "Q8_0")
    assert got.path == smollm2_path and not got.built and builds == []
    assert len(caplog.records) == 1 and "already quantized" in caplog.text


def test_bad_types_are_refused():
    with pytest.raises(RequestError, match="unknown type"):
        quantize_type("Q9_9")
    with pytest.raises(RequestError):
        LoadConfig(quantize="")
    assert quantize_type("q5_k") == "Q5_K_M" and quantize_type("Q8_0") == "Q8_0"


def test_lru_bound_and_cache_command(tiny_f16, cache, capsys):
    from warmload.cli import main

    q8 = prepare_quantized(tiny_f16, "Q8_0")
    bound = q8.path.stat().st_size + 4096
    time.sleep(0.01)
    q4 = prepare_quantized(tiny_f16, "Q4_0", max_cache_bytes=bound)  # Q8_0 goes (oldest)
    assert not q8.path.exists() and q4.path.exists()
    assert [e.qtype for e in weight_cache.list_entries()] == ["Q4_0"]
    q8 = prepare_quantized(tiny_f16, "Q8_0", max_cache_bytes=1 << 40)
    assert [e.qtype for e in weight_cache.list_entries()] == ["Q8_0", "Q4_0"]
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "quantized" in listed and str(tiny_f16) in listed and "Q4_0" in listed
    assert main(["cache", "clear", "quantized"]) == 0
    assert "removed quantized" in capsys.readouterr().out
    assert weight_cache.list_entries() == [] and not q8.path.exists()
    assert sorted(cache.iterdir()) == []  # lock files too


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A tiny random Llama as a Hugging Face folder (BF16 SafeTensors, config.json, SmolLM2's
    vocab as tokenizer.json), written without transformers."""
    pytest.importorskip("tokenizers")
    from test_quantizer_hf import _tokenizer_json

    from warmload.formats.safetensors_write import write_safetensors

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    folder.mkdir()
    meta = _tokenizer_json(smollm2_path, folder)
    n_vocab = len(meta["tokenizer.ggml.tokens"])
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": n_vocab,
        "hidden_size": N_EMBD, "intermediate_size": N_FF, "num_hidden_layers": N_LAYER,
        "num_attention_heads": N_HEAD, "num_key_value_heads": N_KV, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2,
    }))  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
        "chat_template": meta["tokenizer.chat_template"],
    }))  # fmt: skip
    head = N_EMBD // N_HEAD
    shapes = {"model.embed_tokens.weight": (n_vocab, N_EMBD), "model.norm.weight": (N_EMBD,)}
    for i in range(N_LAYER):
        b = f"model.layers.{i}."
        shapes |= {
            b + "input_layernorm.weight": (N_EMBD,),
            b + "post_attention_layernorm.weight": (N_EMBD,),
            b + "self_attn.q_proj.weight": (N_EMBD, N_EMBD),
            b + "self_attn.k_proj.weight": (N_KV * head, N_EMBD),
            b + "self_attn.v_proj.weight": (N_KV * head, N_EMBD),
            b + "self_attn.o_proj.weight": (N_EMBD, N_EMBD),
            b + "mlp.gate_proj.weight": (N_FF, N_EMBD), b + "mlp.up_proj.weight": (N_FF, N_EMBD),
            b + "mlp.down_proj.weight": (N_EMBD, N_FF),
        }  # fmt: skip
    rng = np.random.default_rng(7)
    tensors = {}
    for name, shape in shapes.items():
        scale, base = (0.1, 1.0) if len(shape) == 1 else (0.05, 0.0)
        x = (base + scale * rng.standard_normal(shape)).astype(np.float32)
        tensors[name] = ("BF16", shape, quantize(x, "BF16"))
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def test_hf_folder_quantized_at_load(hf_folder, tmp_path, builds, caplog):
    ref = tmp_path / "ref.gguf"
    quantize_checkpoint(hf_folder, ref, "Q8_0", write_sha256_file=False)
    ids = [1, 504, 3458, 1219, 28]
    engine = warmload.load(hf_folder, quantize="Q8_0", threads=1)
    assert engine.path.read_bytes() == ref.read_bytes() and len(builds) == 1
    want = warmload.load(ref, threads=1).logits(ids).numpy()
    assert np.array_equal(engine.logits(ids).numpy(), want)
    assert not prepare_quantized(hf_folder, "Q8_0").built and len(builds) == 1
    config = hf_folder / "config.json"  # a changed file of the folder invalidates the entry
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e-06'))
    with caplog.at_level(logging.WARNING, logger=LOG):
        again = prepare_quantized(hf_folder, "Q8_0")
    assert again.built and "source changed" in caplog.text and len(builds) == 2
    assert again.path.read_bytes() != ref.read_bytes()


def test_command_line_flag(tiny_f16, cache, capsys):
    from warmload.cli import build_parser, main
    from warmload.cli.serve import server_config

    argv = ["run", "-m", str(tiny_f16), "--quantize", "q8_0", "-p", "Hi", "-n", "2", "--raw"]
    assert main([*argv, "--temp", "0", "-t", "1"]) == 0
    assert [e.qtype for e in weight_cache.list_entries()] == ["Q8_0"]
    assert main(["run", "-m", str(tiny_f16), "--quantize", "Q9_9", "-p", "Hi"]) == 2
    assert "error: --quantize 'Q9_9': unknown type" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "-m", "smollm2", "--quantize", "q4_k"])
    assert server_config(args).load.quantize == "Q4_K_M"


def test_full_disk_while_building_degrades(tiny_f16, tmp_path, cache, monkeypatch, caplog):
    import errno

    real = warmload.quantizer.quantize_checkpoint

    def full_in_cache(src, dst, *args, **kwargs):
        if Path(dst).parent == cache:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(warmload.quantizer, "quantize_checkpoint", full_in_cache)
    with caplog.at_level(logging.WARNING, logger=LOG):
        got = prepare_quantized(tiny_f16, "Q8_0")
    assert len(caplog.records) == 1 and "No space left" in caplog.text
    assert got.built and not got.cached and got.path.parent != cache
    assert got.path.read_bytes() == reference(tiny_f16, tmp_path, "Q8_0")
    assert weight_cache.list_entries() == [] and not list(cache.glob("*.gguf"))


def test_read_only_cache_still_serves_its_entries(tiny_f16, builds, monkeypatch, caplog):
    import errno

    built = prepare_quantized(tiny_f16, "Q8_0")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(weight_cache, "locked", read_only)
    with caplog.at_level(logging.WARNING, logger=LOG):
        got = prepare_quantized(tiny_f16, "Q8_0")
    assert (got.path, got.built, got.cached) == (built.path, False, True) and len(builds) == 1
    assert not caplog.records
