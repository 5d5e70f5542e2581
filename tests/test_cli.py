"""The command line: inspect on the real files, and errors as `error: ...` with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from warmload.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "warmload", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("run", "chat", "inspect", "bench"):
        assert command in out.stdout


def test_inspect_json_on_smollm2(smollm2_path, capsys):
    assert main(["inspect", str(smollm2_path), "--json", "--tensors"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["architecture"] == "llama"
    assert summary["file_type"] == "Q4_1"
    assert summary["tensor_count"] == len(summary["tensors"]) == 272
    assert summary["has_chat_template"] is True
    assert 130e6 < summary["parameter_count"] < 140e6


def test_inspect_table_on_gemma3(gemma3_path, capsys):
    assert main(["inspect", str(gemma3_path)]) == 0
    out = capsys.readouterr().out
    assert "gemma3" in out
    assert "Q4_K - Medium" in out


@pytest.mark.parametrize(
    "make_bad,expected",
    [
        (lambda d: d / "missing.gguf", "no such file"),
        (lambda d: d, "d"),  # a directory without weights
        (lambda d: (d / "notes.txt").write_text("hello, not a model") and d / "notes.txt", ""),
    ],
    ids=["missing", "directory", "not-a-model"],
)
def test_bad_input_prints_error_and_exits_2(tmp_path, make_bad, expected):
    path = make_bad(tmp_path)
    out = run_cli("inspect", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr
    assert expected in out.stderr.lower()


def test_truncated_gguf_is_a_clear_error(tmp_path, smollm2_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_path.read_bytes()[:5_000_000])
    out = run_cli("inspect", str(truncated))
    assert out.returncode == 2
    assert "truncated" in out.stderr.lower() or "end" in out.stderr.lower()
    assert "Traceback" not in out.stderr
