"""quantize_checkpoint: whole output files byte-identical to llama.cpp's llama_model_quantize
on the same F16 source (when llama-cpp-python is installed), metadata, overrides, atomicity."""

from __future__ import annotations

import ctypes
import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest

from warmload.errors import CheckpointError, OutputError, RequestError, UnsupportedError
from warmload.formats.gguf import read_gguf
from warmload.formats.gguf_write import FLOAT32, GGUFWriter, TensorSpec, encode_kv, read_raw_kv
from warmload.formats.gguf_write import write_gguf as write_file
from warmload.quant.quantize import quantize
from warmload.quant.quantize_mix import FILE_TYPES
from warmload.quantizer import quantize_checkpoint

N_LAYER, N_EMBD, N_FF, N_VOCAB = 8, 256, 256, 512


def _values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Heavy-tailed weights from integer hashing and exact float32 operations: the same on
    every platform, so the golden file hashes below hold everywhere."""
    n = int(np.prod(shape))
    h = np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)
    h = h * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(29)
    a = (h >> np.uint64(40)).astype(np.float32) / np.float32(2**24) - np.float32(0.5)
    b = ((h >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(2**24)
    return (a / (b + np.float32(1 / 64)) * np.float32(0.01)).reshape(shape)


def _tiny_llama(path: Path, tied: bool) -> Path:
    """A random llama model small enough to quantize in well under a second, with the shapes
    and GQA (4 heads, 1 KV head) that the mix rules look at; tensors in F16, norms in F32."""
    kv = [
        encode_kv("general.architecture", "llama"),
        encode_kv("general.name", "tiny"),
        encode_kv("llama.block_count", N_LAYER),
        encode_kv("llama.context_length", 128),
        encode_kv("llama.embedding_length", N_EMBD),
        encode_kv("llama.feed_forward_length", N_FF),
        encode_kv("llama.attention.head_count", 4),
        encode_kv("llama.attention.head_count_kv", 1),
        encode_kv("llama.attention.layer_norm_rms_epsilon", 1e-5, FLOAT32),
        encode_kv("llama.rope.dimension_count", 64),
        encode_kv("general.file_type", 1),
    ]
    shapes = {"token_embd.weight": (N_VOCAB, N_EMBD), "output_norm.weight": (N_EMBD,)}
    if not tied:
        shapes["output.weight"] = (N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (N_EMBD,), b + "ffn_norm.weight": (N_EMBD,),
            b + "attn_q.weight": (N_EMBD, N_EMBD), b + "attn_k.weight": (64, N_EMBD),
            b + "attn_v.weight": (64, N_EMBD), b + "attn_output.weight": (N_EMBD, N_EMBD),
            b + "ffn_gate.weight": (N_FF, N_EMBD), b + "ffn_up.weight": (N_FF, N_EMBD),
            b + "ffn_down.weight": (N_EMBD, N_FF),
        }  # fmt: skip
    tensors = []
    for seed, (name, shape) in enumerate(shapes.items()):
        x = _values(shape, seed)
        t = "F32" if len(shape) == 1 else "F16"
        tensors.append((TensorSpec(name, shape, t), quantize(x, t)))
    write_file(path, kv, tensors)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("src") / "tiny-f16.gguf", tied=False)


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("src") / "tiny-tied-f16.gguf", tied=True)


@pytest.fixture(scope="module")
def llama_quantize():
    """llama.cpp's quantizer: (src, dst, type name, **params) -> None."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ggml_ids = {"Q6_K": 14, "Q8_0": 8, "F16": 1, "Q4_0": 2}

    def run(src: Path, dst: Path, qtype: str, **params: object) -> None:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.nthread = FILE_TYPES[qtype][0], 1
        for k, v in params.items():
            setattr(p, k, ggml_ids[v] if isinstance(v, str) else v)
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
        assert rc == 0, f"llama_model_quantize failed for {qtype}"

    return run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.peer
@pytest.mark.parametrize("qtype", list(FILE_TYPES))
def test_file_identical_to_llama_cpp(tiny, llama_quantize, tmp_path: Path, qtype: str) -> None:
    if qtype == "F32":
        pytest.skip("llama.cpp keeps F16 sources as they are for 'all F32'")
    ours = quantize_checkpoint(tiny, tmp_path / "ours.gguf", qtype, threads=2)
    llama_quantize(tiny, tmp_path / "ref.gguf", qtype)
    if ours.sha256 != _sha(tmp_path / "ref.gguf"):
        a, b = read_gguf(tmp_path / "ours.gguf"), read_gguf(tmp_path / "ref.gguf")
        types = {n: (t.ggml_type, b.tensors[n].ggml_type) for n, t in a.tensors.items()}
        pytest.fail(f"{qtype}: differs; types {[(n, t) for n, t in types.items() if t[0] != t[1]]}")
    assert (tmp_path / "ours.gguf.sha256").read_text() == f"{ours.sha256}  ours.gguf\n"


@pytest.mark.peer
@pytest.mark.parametrize(
    ("qtype", "params", "ours"),
    [
        ("Q4_K_M", {}, {}),  # tied embeddings: token_embd takes the output's Q6_K
        ("Q3_K_M", {"pure": True}, {"pure": True}),
        ("Q5_K_S", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_0"},
         {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_0"}),
    ],
)  # fmt: skip
def test_tied_and_overrides_identical_to_llama_cpp(
    tiny_tied, llama_quantize, tmp_path: Path, qtype: str, params: dict, ours: dict
) -> None:
    r = quantize_checkpoint(tiny_tied, tmp_path / "o.gguf", qtype, **ours)
    llama_quantize(tiny_tied, tmp_path / "r.gguf", qtype, **params)
    assert r.sha256 == _sha(tmp_path / "r.gguf")


# SHA-256 of the files llama_model_quantize (llama-cpp-python 0.3.36) makes from the tiny F16
# source; test_file_identical_to_llama_cpp re-checks all types where llama.cpp is installed.
GOLDEN_FILE_SHA256 = {
    "F16": "2a03292a01870deca9aa4f51eaf6f8069363dd61ebb00b38f8252a4a597fd4c7",
    "BF16": "fbd6361d854b772a35c5914a1675866618bc01c37c136d0626fb3b665a197c4a",
    "Q8_0": "1b483030d5203ba61fb09d0fd36c0d74002e32a5327ad580cdc271988349506c",
    "Q6_K": "e946b222c608dd43c77b6b858b0d158ea3e05eddbce5b505c89ea5e37e4cc5a3",
    "Q5_K_M": "c917cc60002593c5b99c5d1857e439c876c4ec109d5800696cfa22e0ec395178",
    "Q5_K_S": "a2444fea9bb83030790579171710cd5831ab92b2460158799d2f1b1bee633c31",
    "Q5_0": "2f66f65dd9837c475866d25dd95d5dc94088922f3ef680c42da84ef65d4632f0",
    "Q5_1": "39b3f9e6fd596ca9842a63c55e26e970decb9fb77bd2c344360c2f74aa0e8cd8",
    "Q4_K_M": "23e2e888775a4ab59bd93328e678cd36fd65d8229eeec451d2c56f60a0777d9b",
    "Q4_K_S": "fb9d24b10c8dfcc5eefa33067ad8a1e51f991e9c85492e9f0b5d0667e14ded3f",
    "Q4_0": "c6c33c081b23bed3547f361d695df5c67dbd8eade6dc6eddf67dd92aea10e0a0",
    "Q4_1": "ad524131dda4fbe848048f8062d31b9704e0fc0658f7de1c834c8612a061b8a1",
    "Q3_K_L": "6fb9475f7711f64c10053372c75e6d70feedfe0a09f812379354db3dcb6342ee",
    "Q3_K_M": "45c75667feadb214d8d96244e8fc72b4b062057f4232da789f5ea3bb16cb49f3",
    "Q3_K_S": "92a6567d4b54cfe3cd2156cc012c70c69eee2b4bc91d536ea53a5f9278d55224",
    "Q2_K": "34956126b97232e4e0c7494a16d7ce79c90258edb6cb27f80ca2c6ecc76eecda",
}


@pytest.mark.parametrize("qtype", list(GOLDEN_FILE_SHA256))
def test_file_matches_llama_cpp_golden(tiny, tmp_path: Path, qtype: str) -> None:
    assert quantize_checkpoint(tiny, tmp_path / "q.gguf", qtype).sha256 == GOLDEN_FILE_SHA256[qtype]


@pytest.mark.peer
def test_requantize_identical_to_llama_cpp(tiny, llama_quantize, tmp_path: Path) -> None:
    """--allow-requantize: an already quantized source is dequantized (warmload's torch
    dequantizers) and quantized again, with the same bytes as llama.cpp's requantization."""
    q8 = quantize_checkpoint(tiny, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(RequestError, match="allow-requantize"):
        quantize_checkpoint(q8.path, tmp_path / "q4.gguf", "Q4_K_M")
    ours = quantize_checkpoint(q8.path, tmp_path / "q4.gguf", "Q4_K_M", allow_requantize=True)
    llama_quantize(q8.path, tmp_path / "ref.gguf", "Q4_K_M", allow_requantize=True)
    assert ours.sha256 == _sha(tmp_path / "ref.gguf")


def test_progress_reaches_the_total_in_file_order(tiny, tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    r = quantize_checkpoint(tiny, tmp_path / "q.gguf", "Q6_K", progress=lambda *a: calls.append(a))
    done = [c[0] for c in calls]
    assert done == sorted(set(done)) and done[-1] == calls[-1][1] == r.n_weights
    assert [c[2] for c in calls] == list(r.tensor_types)  # one call per tensor, as written


def test_cli_quantize_prints_sizes_bits_per_weight_and_sha256(
    tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from warmload.cli import main

    out_path = tmp_path / "q.gguf"
    argv = ["quantize", str(tiny), str(out_path), "q4_k_m", "--tensor-type", "ffn_down=Q8_0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    sha = _sha(out_path)
    assert f"sha256   {sha}" in out and "bits per weight" in out and " -> " in out
    assert (tmp_path / "q.gguf.sha256").read_text() == f"{sha}  q.gguf\n"
    assert read_gguf(out_path).tensors["blk.0.ffn_down.weight"].ggml_type == "Q8_0"
    assert main(["quantize", str(tiny), str(out_path), "Q6_K", "--pure", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == _sha(out_path) and 6.5 < info["bits_per_weight"] < 6.6
    assert main(["quantize", str(tiny), str(tmp_path / "x.gguf"), "Q7_K"]) == 2
    assert "error: unknown type 'Q7_K'" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_metadata_kept_with_types_and_file_type_set(tiny, tmp_path: Path) -> None:
    r = quantize_checkpoint(tiny, tmp_path / "q.gguf", "Q4_K_M")
    before = {kv.key: kv for kv in read_raw_kv(tiny)}
    after = {kv.key: kv for kv in read_raw_kv(r.path)}
    for key, kv in before.items():
        if key != "general.file_type":
            assert after[key] == kv
    meta = read_gguf(r.path).metadata
    assert meta["general.file_type"] == 15 and meta["general.quantization_version"] == 2
    assert after["general.file_type"].vtype == 4  # UINT32, as llama.cpp requires
    assert r.tensor_types["blk.0.attn_norm.weight"] == "F32"
    assert r.tensor_types["output.weight"] == "Q6_K"
    assert r.tensor_types["blk.0.attn_v.weight"] == "Q6_K"  # use_more_bits(0, 8)
    assert r.tensor_types["blk.1.attn_v.weight"] == "Q4_K"
    assert 4.5 < r.bits_per_weight < 6.5 and r.dst_nbytes == r.path.stat().st_size


def test_tensor_type_regex_override_and_fallback(tiny, tmp_path: Path) -> None:
    r = quantize_checkpoint(
        tiny, tmp_path / "q.gguf", "Q4_0",
        tensor_types=[(r"ffn_down", "Q8_0"), (r"attn_.*\.weight", "Q5_1")],
    )  # fmt: skip
    assert r.tensor_types["blk.3.ffn_down.weight"] == "Q8_0"
    assert r.tensor_types["blk.3.attn_q.weight"] == "Q5_1"
    assert r.tensor_types["blk.3.attn_norm.weight"] == "F32"  # not quantizable: untouched
    assert r.tensor_types["blk.3.ffn_up.weight"] == "Q4_0"


def test_requantizing_needs_the_flag(smollm2_path: Path, tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="allow-requantize"):
        quantize_checkpoint(smollm2_path, tmp_path / "q.gguf", "Q4_0")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RequestError, match="unknown type"):
        quantize_checkpoint(smollm2_path, tmp_path / "q.gguf", "Q7_K")
    with pytest.raises(CheckpointError, match="no config.json"):
        quantize_checkpoint(tmp_path, tmp_path / "q.gguf", "Q4_0")  # a folder: Hugging Face
    lone = tmp_path / "model.safetensors"
    lone.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UnsupportedError, match="lone SafeTensors"):
        quantize_checkpoint(lone, tmp_path / "q.gguf", "Q4_0")
    lone.unlink()
    with pytest.raises(RequestError, match="no such file"):
        quantize_checkpoint(tmp_path / "missing.gguf", tmp_path / "q.gguf", "Q4_0")
    with pytest.raises(RequestError, match="no such folder"):
        quantize_checkpoint(smollm2_path, tmp_path / "missing" / "q.gguf", "Q4_0")


def test_failures_leave_no_output(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "q.gguf"
    dst.write_bytes(b"previous")  # an older OUT survives a failed run

    def interrupt(done: int, total: int, name: str) -> None:
        if name.startswith("blk.2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(tiny, dst, "Q4_K_M", progress=interrupt)
    assert sorted(p.name for p in out.iterdir()) == ["q.gguf"] and dst.read_bytes() == b"previous"

    real = GGUFWriter._write  # the background thread's file write + hash
    calls = {"n": 0}

    def disk_full(self, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(GGUFWriter, "_write", disk_full)
    with pytest.raises(OutputError, match=r"new\.gguf: No space left on device.*nothing was"):
        quantize_checkpoint(tiny, out / "new.gguf", "Q8_0")  # typed, not a bare OSError
    assert sorted(p.name for p in out.iterdir()) == ["q.gguf"]


# use_extra_bufts=False: llama.cpp's AMX weight buffers crash (SIGSEGV in
# ggml_backend_amx_mul_mat) on CPUs that report AMX inside VMs that do not enable it; the plain
# CPU path runs the same file.
_LLAMA_CPP_GREEDY = """
import sys, llama_cpp, llama_cpp.llama_cpp as lib
default_params = lib.llama_model_default_params
def model_params():
    p = default_params()
    p.use_extra_bufts = False
    return p
lib.llama_model_default_params = model_params
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=False, n_threads=2)
print(llm(sys.argv[2], max_tokens=4, temperature=0)["choices"][0]["text"])
"""


def _llama_cpp_greedy(path: Path, prompt: str) -> str:
    """llama.cpp's greedy continuation, in a child process: a crash of the native library
    fails this test with its signal instead of killing the test run."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _LLAMA_CPP_GREEDY, str(path), prompt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.fail(
            f"llama.cpp failed to run {path.name} (exit status {out.returncode}; a negative "
            f"one is a signal: check the llama-cpp-python build): {out.stderr[-500:]}"
        )
    return out.stdout


@pytest.mark.slow
@pytest.mark.peer
def test_real_model_round_trip_runs_in_llama_cpp_and_warmload(
    smollm2_path: Path, llama_quantize, tmp_path: Path
) -> None:
    """SmolLM2 dequantized to F16 by warmload, then Q8_0, Q4_K_M and Q3_K_S: the same files as
    llama.cpp's quantizer makes from that F16, and both llama.cpp and warmload run them."""
    pytest.importorskip("llama_cpp")
    import warmload

    prompt = "The capital of France is"
    f16 = quantize_checkpoint(smollm2_path, tmp_path / "f16.gguf", "F16", allow_requantize=True)
    assert set(f16.tensor_types.values()) == {"F16", "F32"}
    tok = warmload.load_tokenizer(f16.path)
    for qtype in ("Q8_0", "Q4_K_M", "Q3_K_S"):
        q = quantize_checkpoint(f16.path, tmp_path / f"{qtype}.gguf", qtype)
        llama_quantize(f16.path, tmp_path / "ref.gguf", qtype)
        assert q.sha256 == _sha(tmp_path / "ref.gguf"), qtype
        assert "Paris" in _llama_cpp_greedy(q.path, prompt), qtype
        logits = warmload.load(q.path).logits(tok.encode(prompt))
        assert "Paris" in tok.decode([int(logits[-1].argmax())]), qtype
        q.path.unlink()


def test_gguf_writer_round_trip_with_gguf_py(tmp_path: Path) -> None:
    import gguf

    kv = [
        encode_kv("general.alignment", 64),
        encode_kv("a.u8", np.uint8(7)),
        encode_kv("a.i64", -(2**40)),
        encode_kv("a.f64", np.float64(0.1)),
        encode_kv("a.flag", True),
        encode_kv("a.words", ["x", "ÿ", ""]),
        encode_kv("a.ids", np.array([1, -2], np.int32)),
    ]
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    digest = write_file(
        tmp_path / "t.gguf",
        kv,
        [(TensorSpec("w", (2, 32), "Q8_0"), quantize(x, "Q8_0")),
         (TensorSpec("b", (3,), "F32"), np.ones(3, np.float32))],
    )  # fmt: skip
    assert digest == _sha(tmp_path / "t.gguf")
    r = gguf.GGUFReader(tmp_path / "t.gguf")
    f = r.fields
    assert f["a.u8"].types == [gguf.GGUFValueType.UINT8] and f["a.u8"].contents() == 7
    assert f["a.i64"].contents() == -(2**40) and f["a.flag"].contents() is True
    assert f["a.words"].contents() == ["x", "ÿ", ""] and f["a.ids"].contents() == [1, -2]
    assert r.alignment == 64 and all(t.data_offset % 64 == 0 for t in r.tensors)
    w = next(t for t in r.tensors if t.name == "w")
    assert w.tensor_type == gguf.GGMLQuantizationType.Q8_0 and list(w.shape) == [32, 2]
    assert np.asarray(w.data).tobytes() == quantize(x, "Q8_0").tobytes()
    assert [kv.key for kv in read_raw_kv(tmp_path / "t.gguf")][:2] == ["general.alignment", "a.u8"]
    with pytest.raises(Exception, match="needs 68 bytes, got 4"):
        write_file(tmp_path / "u.gguf", kv, [(TensorSpec("w", (2, 32), "Q8_0"), b"abcd")])
    assert not (tmp_path / "u.gguf").exists() and len(list(tmp_path.iterdir())) == 1


def test_nan_weights_are_refused_by_name(tmp_path: Path) -> None:
    kv = [encode_kv("general.architecture", "llama"), encode_kv("llama.block_count", 1)]
    x = np.ones((4, 256), np.float32)
    x[2, 5] = np.nan
    src = tmp_path / "nan.gguf"
    write_file(src, kv, [(TensorSpec("blk.0.ffn_up.weight", (4, 256), "F16"), quantize(x, "F16"))])
    with pytest.raises(CheckpointError, match=r"'blk.0.ffn_up.weight'.*NaN or infinite"):
        quantize_checkpoint(src, tmp_path / "q.gguf", "Q4_K_M")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.gguf"]


@pytest.mark.parametrize("qtype", ["Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_S"])
def test_file_golden_without_the_c_kernels(tiny, tmp_path: Path, monkeypatch, qtype: str) -> None:
    """The numpy K-quants (the path where the C extension is not built) make the same files."""
    import warmload.quant.quantize as qmod

    monkeypatch.setattr(qmod, "_native_k_quantizer", lambda: None)
    assert quantize_checkpoint(tiny, tmp_path / "q.gguf", qtype).sha256 == GOLDEN_FILE_SHA256[qtype]
