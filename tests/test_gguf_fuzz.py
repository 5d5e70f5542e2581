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


# ----------------------------------------------------------------- metadata values (issue 17)
# The byte mutators above rarely produce a well-formed file whose *values* are hostile. These
# replace one metadata value at a time (or a config.json / tokenizer_config.json / index /
# SafeTensors header value of a Hugging Face folder) with a value of another type, shape or
# range, and run the whole path a user runs: open, inspect, tokenizer, load, one generated
# token. Every case must run or end in a WarmloadError (the CLI's `error: ...`, exit 2).

META_CASES = 160
HF_CASES = 120
LAYER_KEYS = ("llama.block_count", "num_hidden_layers")  # huge values: issue 17 item 9 (arch)


def hostile_values(rng: random.Random) -> list[object]:
    import numpy as np

    return [
        np.uint32(0), np.uint32(1), np.uint32(2**32 - 1), np.int32(-5), np.uint64(2**64 - 1),
        np.int64(-(2**63)), np.float32("nan"), np.float32("inf"), np.float32(-1.0),
        np.float32(0.0), np.float32(1e30), True, "thirty", "", "\udcff\udcfe",
        [], [np.uint32(3)] * 3, ["a", "b"], [[1, 2], [3]], [np.float32("nan")] * 4,
        np.uint32(rng.getrandbits(8)),
    ]  # fmt: skip


def encode_hostile(key: str, value: object):
    import hostile

    from warmload.formats.gguf_write import encode_kv

    if isinstance(value, str) and not value.isascii():
        return hostile.raw_kv(key.encode(), 8, struct.pack("<Q", 2) + b"\xff\xfe")
    if isinstance(value, list) and value and isinstance(value[0], list):
        return hostile.nested_array_kv(key, [[str(x) for x in row] for row in value])
    if isinstance(value, list) and not value:
        return hostile.raw_kv(key.encode(), ARR, struct.pack("<IQ", U32, 0))
    return encode_kv(key, value)


def run_user_path(path: Path) -> str:
    """open -> inspect -> load (tokenizer, template) -> one token; 'ok' or the error class."""
    from warmload.engine import load_engine
    from warmload.errors import WarmloadError
    from warmload.formats.open import open_checkpoint
    from warmload.formats.summary import metadata_for_json, summarize

    try:
        with open_checkpoint(path) as ck:
            json_text = str(summarize(ck)) + str(metadata_for_json(ck.metadata))
            json_text.encode("utf-8")  # printable
        engine = load_engine(path, use_cache=False)
        try:
            engine.generate("the sky", max_tokens=1, temperature=0)
            engine.chat([{"role": "user", "content": "hi"}], max_tokens=1, temperature=0)
        finally:
            engine.close()
    except WarmloadError as e:
        return type(e).__name__
    return "ok"


def _run_case(path: Path, label: str) -> str:
    started = time.perf_counter()
    try:
        outcome = run_user_path(path)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{label}: {type(e).__name__}: {e}")
    seconds = time.perf_counter() - started
    assert seconds < 10, f"{label} took {seconds:.1f} s"  # a hang guard; cases take ms
    return outcome


@pytest.mark.slow
def test_fuzz_metadata_values(tmp_path: Path) -> None:
    import hostile

    rng = random.Random(17)
    base = hostile.base_kv()
    # general.alignment: our writer refuses to lay out a bad one (the byte mutators cover it)
    keys = [item.key for item in base if item.key != "general.alignment"]
    keys += ["general.unknown", "tokenizer.chat_template"]
    outcomes: dict[str, int] = {}
    for case in range(META_CASES):
        key = rng.choice(keys)
        value = rng.choice(hostile_values(rng))
        if key in LAYER_KEYS and hasattr(value, "dtype"):  # numpy integers and floats
            value = type(value)(min(value, 64)) if value >= 0 else value  # NaN stays NaN
        kv = [item for item in base if item.key != key] + [encode_hostile(key, value)]
        path = hostile.write_model(tmp_path / f"m{case % 4}.gguf", kv)
        outcome = _run_case(path, f"case {case}: {key} = {value!r}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > 0.1 * META_CASES, outcomes  # harmless values still run
    assert sum(v for k, v in outcomes.items() if k != "ok") > 0.3 * META_CASES, outcomes


def _mutate_json(
    rng: random.Random, data: object, values: list[object], keys: list[str] | None = None
) -> object:
    """One value somewhere inside a JSON document replaced (or a key dropped); `keys`: the
    top-level keys that may be chosen (default all)."""
    if not isinstance(data, dict) or not data:
        return rng.choice(values)
    key = rng.choice(keys if keys is not None else sorted(data))
    out = dict(data)
    if rng.random() < 0.15:
        del out[key]
    elif isinstance(out[key], dict) and rng.random() < 0.5:
        out[key] = _mutate_json(rng, out[key], values)
    else:
        out[key] = rng.choice(values)
    return out


def mutate_hf_folder(rng: random.Random, folder: Path, hparams: bool = False) -> str:
    """Break one file of a model folder; returns what was done. hparams: config.json's model
    hyperparameters are mutated too (else only its other keys)."""
    import json

    import hostile

    values = [None, 0, -1, 2**64, 1.5, float("nan"), "30", "tiny", "", [], [1, "a"], {},
              {"a": [None]}, True, "../x", ["F16"], "{{ range(10**9) }}"]  # fmt: skip
    target = rng.choice(["config.json"] * 4 + ["tokenizer_config.json"] * 2 + ["header", "raw"])
    if target == "header":
        entries = hostile.hf_entries_of(folder)
        name = rng.choice(sorted(entries))
        dtype, shape, raw = entries[name]
        field = rng.choice(["dtype", "shape", "raw"])
        if field == "dtype":
            dtype = rng.choice(values + ["I16", "I32", "F64", "BOOL"])
        elif field == "shape":
            shape = rng.choice([[], [0], [-1, 2], ["a"], shape[::-1], [*shape, 1], 5])
        else:
            raw = raw[: rng.randrange(len(raw) + 1)]
        entries[name] = (dtype, shape, raw)
        (folder / "model.safetensors").write_bytes(hostile.safetensors_bytes(entries))
        return f"model.safetensors {name}.{field} = {dtype if field == 'dtype' else shape!r}"
    if target == "raw":
        name = rng.choice(["config.json", "tokenizer_config.json", "tokenizer.json"])
        text = (folder / name).read_bytes()
        cut = rng.choice([text[: rng.randrange(len(text))], b"\xff\xfe", b"[" * 5000, b"null"])
        (folder / name).write_bytes(cut)
        return f"{name} = {cut[:20]!r}..."
    data = json.loads((folder / target).read_text())
    keys = None
    if target == "config.json":
        keys = sorted(hostile.HF_CONFIG) if hparams else ["model_type", "architectures"]
    data = _mutate_json(rng, data, values, keys)
    (folder / target).write_text(json.dumps(data))
    return f"{target} -> {json.dumps(data)[:120]}"


def _fuzz_hf(tmp_path: Path, seed: int, hparams: bool) -> dict[str, int]:
    import shutil

    import hostile

    seed_folder = hostile.hf_model_folder(tmp_path / "seed")
    assert run_user_path(seed_folder) == "ok"
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    for case in range(HF_CASES):
        folder = tmp_path / f"case{case % 3}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(seed_folder, folder)
        what = mutate_hf_folder(rng, folder, hparams)
        outcome = _run_case(folder, f"case {case}: {what}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@pytest.mark.slow
def test_fuzz_hf_folders(tmp_path: Path) -> None:
    outcomes = _fuzz_hf(tmp_path, 15, hparams=False)
    assert sum(v for k, v in outcomes.items() if k != "ok") > 0.3 * HF_CASES, outcomes


@pytest.mark.slow
def test_fuzz_hf_config_values(tmp_path: Path) -> None:
    outcomes = _fuzz_hf(tmp_path, 16, hparams=True)
    assert sum(v for k, v in outcomes.items() if k != "ok") > 0.3 * HF_CASES, outcomes
