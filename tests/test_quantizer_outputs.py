"""quantize never writes what the reader will refuse, and write failures are typed errors with
the path (issue 17 items 16 and 17)."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import hostile
import numpy as np
import pytest

from warmload.errors import CheckpointError, OutputError
from warmload.formats.gguf import read_gguf_header
from warmload.formats.gguf_write import UINT64, GGUFWriter, TensorSpec, encode_kv
from warmload.quantizer import quantize_checkpoint


def test_a_uint64_alignment_is_honoured(tmp_path: Path) -> None:
    src = hostile.alignment_u64(tmp_path / "src.gguf")
    assert read_gguf_header(src).alignment == 64
    out = quantize_checkpoint(src, tmp_path / "q.gguf", "Q8_0", allow_requantize=True).path
    header = read_gguf_header(out)
    assert header.alignment == 64 and all(t.offset % 64 == 0 for t in header.tensors.values())
    from warmload.engine import load_engine

    engine = load_engine(out, use_cache=False)
    try:
        assert engine.generate("the sky", max_tokens=2, temperature=0).text is not None
    finally:
        engine.close()


@pytest.mark.parametrize("alignment", [np.uint64(3), np.uint64(0), np.float32(32.0), "32"])
def test_the_writer_refuses_an_alignment_the_reader_would(alignment, tmp_path: Path) -> None:
    kv = [encode_kv("general.alignment", alignment)]
    with open(tmp_path / "x.gguf", "wb") as f, pytest.raises(CheckpointError, match="alignment"):
        GGUFWriter(f, kv, [TensorSpec("t", (32,), "F32")])


def test_the_writer_lays_out_a_uint64_alignment(tmp_path: Path) -> None:
    kv = [encode_kv("general.alignment", np.uint64(128), UINT64)]
    with open(tmp_path / "x.gguf", "wb") as f:
        w = GGUFWriter(f, kv, [TensorSpec("a", (3,), "F32"), TensorSpec("b", (5,), "F32")])
        w.write_tensor("a", np.ones(3, np.float32))
        w.write_tensor("b", np.ones(5, np.float32))
        w.finish()
    header = read_gguf_header(tmp_path / "x.gguf")
    assert header.alignment == 128 and [t.offset % 128 for t in header.tensors.values()] == [0, 0]


def _hf_folder(folder: Path, kv_heads: int) -> Path:
    from test_hf_folder import tiny_tokenizer_folder

    entries = hostile.hf_entries()
    entries["model.embed_tokens.weight"] = (
        "F16",
        [260, 8],
        np.ones((260, 8), np.float16).tobytes(),
    )
    config = dict(hostile.HF_CONFIG, num_key_value_heads=kv_heads, vocab_size=260)
    hostile.hf_folder(folder, entries, config)
    return tiny_tokenizer_folder(folder, True, {"bos_token": "<|begin|>"})


@pytest.mark.parametrize("kv_heads", [0, 3])
def test_a_folder_with_invalid_kv_heads_is_not_converted(kv_heads: int, tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m", kv_heads)
    with pytest.raises(CheckpointError) as e:
        quantize_checkpoint(folder, tmp_path / "q.gguf", "Q8_0")
    assert str(tmp_path / "m") in str(e.value) or str(tmp_path / "q.gguf") in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no output, no .sha256


def test_a_valid_folder_converts_and_reads_back(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m", 1)
    result = quantize_checkpoint(folder, tmp_path / "q.gguf", "F16")
    assert (tmp_path / "q.gguf.sha256").read_text().split()[0] == result.sha256


def test_a_full_disk_for_the_sha256_names_it(tmp_path: Path, monkeypatch) -> None:
    import warmload.quantizer as quantizer

    real = quantizer.atomic_output

    def full(path, *args):
        if str(path).endswith(".sha256"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args)

    monkeypatch.setattr(quantizer, "atomic_output", full)
    src = hostile.write_model(tmp_path / "src.gguf")
    with pytest.raises(OutputError, match=r"q\.gguf\.sha256: No space left.*complete") as e:
        quantize_checkpoint(src, tmp_path / "q.gguf", "Q8_0", allow_requantize=True)
    assert "sha256 is" in str(e.value)


def test_a_file_size_limit_in_a_real_process_is_an_error_with_the_path(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes write() fail (EFBIG) part-way, as a full disk does."""
    src = hostile.write_model(tmp_path / "src.gguf")
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))
        from warmload.cli import main
        sys.exit(main(["quantize", {str(src)!r}, {str(out / "q.gguf")!r}, "Q8_0",
                       "--allow-requantize"]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and str(out / "q.gguf") in done.stderr
    assert "Traceback" not in done.stderr and list(out.iterdir()) == []
