"""Fuzzing the GGUF reader: thousands of mutated headers end in CheckpointError /
UnsupportedError or a valid Checkpoint, never another exception, a hang, or an allocation
out of proportion to the file (tracemalloc peak per case).

Seeds: small synthetic files; "mini" copies of both real models (their real metadata pairs,
arrays cut to 1500 items, their real tensor names and types with tiny shapes); and the raw
first 96 KiB of both real files. Mutations: truncation, byte flips, huge or boundary counts and
lengths, random ggml type ids in tensor infos, inserted and deleted bytes. Fixed seed."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from test_gguf import ARR, STR, U32, gguf, kv, small_model, tensor_info

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.checkpoint import Checkpoint
from warmload.formats.ggml_types import GGML_TYPES
from warmload.formats.gguf import read_gguf_header

CASES_PER_SEED = 500
TRACE_EVERY = 5
KEEP_ITEMS = 1500
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
INTERESTING_U64 = [0, 1, 7, 255, 256, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype in _SIZES:
        return pos + _SIZES[vtype]
    if vtype == STR:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    item_type, n = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item_type in _SIZES:
        return pos + n * _SIZES[item_type]
    for _ in range(n):
        pos = _skip_value(buf, pos, item_type)
    return pos


def _cut_array(buf: bytes, pos: int, end: int) -> bytes:
    """The encoded array value at pos..end with at most KEEP_ITEMS items."""
    item_type, n = struct.unpack_from("<IQ", buf, pos)
    if n <= KEEP_ITEMS:
        return buf[pos:end]
    body = pos + 12
    if item_type in _SIZES:
        stop = body + KEEP_ITEMS * _SIZES[item_type]
    else:
        stop = body
        for _ in range(KEEP_ITEMS):
            stop = _skip_value(buf, stop, item_type)
    return struct.pack("<IQ", item_type, KEEP_ITEMS) + buf[body:stop]


def mini_copy(path: Path) -> tuple[bytes, list[int]]:
    """A small valid GGUF with the real file's metadata and tensor names/types (see module
    docstring); also the byte positions of its tensor type fields."""
    header = read_gguf_header(path)
    buf = path.read_bytes()[: header.data_offset]
    n_kv = struct.unpack_from("<Q", buf, 16)[0]
    pos, kvs = 24, []
    for _ in range(n_kv):
        key_end = pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
        vtype = struct.unpack_from("<I", buf, key_end)[0]
        end = _skip_value(buf, key_end + 4, vtype)
        value = buf[key_end + 4 : end] if vtype != ARR else _cut_array(buf, key_end + 4, end)
        kvs.append(buf[pos : key_end + 4] + value)
        pos = end
    infos, offset = [], 0
    for t in header.tensors.values():
        gt = GGML_TYPES[t.ggml_type]
        ne = (gt.block_size,) + (1,) * (len(t.shape) - 1)
        infos.append(tensor_info(t.name, ne, gt.id, offset))
        offset += -(-gt.type_size // 32) * 32
    data = gguf(kvs, infos, bytes(offset))
    start = 24 + sum(map(len, kvs))
    type_fields, p = [], start
    for info in infos:
        type_fields.append(p + len(info) - 12)
        p += len(info)
    return data, type_fields


def synthetic_seeds() -> list[tuple[bytes, list[int]]]:
    every = [
        kv("general.architecture", STR, "llama"),
        kv("general.alignment", U32, 64),
        kv("nested", ARR, (ARR, [(U32, [1, 2]), (STR, ["a", "bb"])])),
        kv("tokens", ARR, (STR, [f"t{i}" for i in range(300)])),
    ]
    infos = [tensor_info("a", (32, 2), 8, 0), tensor_info("b", (256,), 12, 128)]
    return [(small_model(), []), (gguf(every, infos, bytes(320), alignment=64), [])]


OPS = ["truncate"] * 3 + ["flip"] * 7 + ["u64"] * 3 + ["type"] * 3 + ["insert", "delete"] * 2


def mutate(rng: random.Random, data: bytes, type_fields: list[int]) -> bytes:
    buf = bytearray(data)
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
        op = rng.choice(OPS)
        hot = min(len(buf), 4096) if rng.random() < 0.5 else len(buf)  # the header start
        at = rng.randrange(max(hot, 1))
        if op == "truncate":
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == "flip":
            for _ in range(rng.randint(1, 8)):
                if buf:
                    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == "u64":
            value = rng.choice([*INTERESTING_U64, len(buf), len(buf) + 1, rng.getrandbits(64)])
            buf[at : at + 8] = struct.pack("<Q", value)
        elif op == "type" and type_fields:
            where = rng.choice(type_fields)
            buf[where : where + 4] = struct.pack("<I", rng.choice([rng.randrange(45), 2**32 - 1]))
        elif op == "insert":
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del buf[at : at + rng.randint(1, 16)]
    return bytes(buf)


def check_valid(ck: Checkpoint, size: int) -> None:
    """Independent re-check of a Checkpoint the reader accepted."""
    end = 0
    for t in sorted(ck.tensors.values(), key=lambda t: t.offset):
        assert t.offset >= max(end, ck.data_offset) and t.offset % ck.alignment == 0
        assert t.nbytes == GGML_TYPES[t.ggml_type].nbytes(t.n_elements) and t.nbytes > 0
        end = t.offset + t.nbytes
    assert end <= size


def run_cases(path: Path, seed: int, data: bytes, type_fields: list[int], n: int) -> dict:
    rng = random.Random(seed)
    outcome = {"valid": 0, "error": 0}
    for case in range(n):
        mutated = mutate(rng, data, type_fields) if case else data
        path.write_bytes(mutated)
        traced = case % TRACE_EVERY == 0  # tracemalloc slows a parse ~10x: sample it
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        try:
            ck = read_gguf_header(path)
        except (CheckpointError, UnsupportedError) as e:
            assert str(e).startswith(str(path)), e
            outcome["error"] += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"seed {seed} case {case}: {type(e).__name__}: {e}")
        else:
            check_valid(ck, len(mutated))
            outcome["valid"] += 1
            del ck
        seconds = time.perf_counter() - started
        assert seconds < 2.0, f"seed {seed} case {case} took {seconds:.1f} s"
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 40 * len(mutated) + (4 << 20), f"seed {seed} case {case}: {peak} bytes"
    return outcome


@pytest.fixture(scope="module")
def seeds(smollm2_path: Path, gemma3_path: Path) -> list[tuple[bytes, list[int], bool]]:
    """(file bytes, positions of tensor type fields, whether the seed itself is valid)."""
    out = [(data, fields, True) for data, fields in synthetic_seeds()]
    for path in (smollm2_path, gemma3_path):
        out.append((*mini_copy(path), True))
        with open(path, "rb") as f:
            out.append((f.read(96 << 10), [], False))
    return out


def test_seeds_are_valid_or_truncated(seeds: list, tmp_path: Path) -> None:
    path = tmp_path / "seed.gguf"
    for data, _, valid in seeds:
        path.write_bytes(data)
        if valid:  # synthetic files and mini copies parse cleanly
            check_valid(read_gguf_header(path), len(data))
        else:  # a raw prefix is a truncated file
            with pytest.raises(CheckpointError, match="truncated"):
                read_gguf_header(path)


def test_mini_copy_keeps_the_real_metadata(smollm2_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "mini.gguf"
    path.write_bytes(mini_copy(smollm2_path)[0])
    mini, real = read_gguf_header(path), read_gguf_header(smollm2_path)
    assert list(mini.metadata) == list(real.metadata) and list(mini.tensors) == list(real.tensors)
    assert mini.metadata["tokenizer.ggml.tokens"] == real.metadata["tokenizer.ggml.tokens"][:1500]
    assert mini.metadata["general.name"] == real.metadata["general.name"]


@pytest.mark.slow
def test_fuzz_gguf_headers(seeds: list, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.gguf"
    totals = {"valid": 0, "error": 0}
    try:
        for i, (data, type_fields, _) in enumerate(seeds):
            outcome = run_cases(path, 1000 + i, data, type_fields, CASES_PER_SEED)
            for k, v in outcome.items():
                totals[k] += v
    finally:
        tracemalloc.stop()
    assert sum(totals.values()) == CASES_PER_SEED * len(seeds)
    assert totals["valid"] > 0.05 * sum(totals.values()), totals  # mutations reach deep
    assert totals["error"] > 0.3 * sum(totals.values()), totals


@pytest.mark.slow
def test_huge_value_at_every_position(tmp_path: Path) -> None:
    """Every count, length, dimension and offset of a small file set to huge values in turn."""
    data = small_model()
    path = tmp_path / "huge.gguf"
    outcomes = {"valid": 0, "error": 0}
    for value in (2**32 - 1, 2**63, 2**64 - 1, len(data) + 1):
        for at in range(0, len(data) - 8):
            mutated = data[:at] + struct.pack("<Q", value) + data[at + 8 :]
            outcome = run_cases(path, at, mutated, [], 1)  # case 0: the bytes as given
            for k, v in outcome.items():
                outcomes[k] += v
    assert outcomes["error"] > 0.5 * sum(outcomes.values()), outcomes
