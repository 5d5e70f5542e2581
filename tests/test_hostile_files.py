"""Every hostile file of tests/hostile.py ends in `error: ...` and exit 2 (or, for inspect, a
printable listing), never a traceback, a hang or output from corrupt data (issue 17)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hostile import CASES, alignment_u64, write_model

from warmload.cli import main

HANG_GUARD_S = 20  # a case takes milliseconds; this only turns a hang into a failure


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err, time.monotonic() - started


def test_the_base_file_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_model(tmp_path / "base.gguf")
    rc, out, err, _ = _run(["run", "-m", str(path), "-p", "the sky", "-n", "3", "--temp", "0",
                            "--check-tensors"], capsys)  # fmt: skip
    assert rc == 0, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write, command = CASES[name]
    path = str(write(tmp_path / (name if name.startswith("hf-") else f"{name}.gguf")))
    if command == "inspect":
        rc, out, err, seconds = _run(["inspect", path], capsys)
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, (rc, out, err)
        assert seconds < HANG_GUARD_S
        return
    if command == "inspect-ok":
        for extra in ([], ["--metadata"], ["--json", "--metadata"]):
            rc, out, err, seconds = _run(["inspect", path, *extra], capsys)
            assert rc == 0, err
            out.encode("utf-8")  # printable under a UTF-8 locale: no lone surrogates
            assert seconds < HANG_GUARD_S
        return
    args = ["run", "-m", path, "-p", "the sky", "-n", "4", "--temp", "0"]
    if command == "run-check":
        args.append("--check-tensors")
    rc, out, err, seconds = _run(args, capsys)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, (rc, out, err)
    assert out == ""  # nothing generated from corrupt data
    assert seconds < HANG_GUARD_S


def test_all_cases_are_written_by_the_script(tmp_path: Path) -> None:
    import hostile

    written = hostile.write_all(tmp_path / "out")
    assert len(written) == len(hostile.CASES) + 2 and all(p.stat().st_size for p in written)
    assert alignment_u64(tmp_path / "a.gguf").stat().st_size > 0
