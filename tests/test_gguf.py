"""GGUF reader: golden facts and a full comparison with gguf-py's GGUFReader on the two real
models, every value type on synthetic files, the string-array scanner against the plain loop,
and one CheckpointError per validation rule. The small GGUF builder here is also used by
test_gguf_fuzz.py."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.gguf import read_gguf, read_gguf_header
from warmload.formats.gguf_strings import _plain, read_string_array

# --- a tiny GGUF builder (struct only; can write invalid files on purpose) -------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?"}
FMT |= {U64: "Q", I64: "q", F64: "d"}


def enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_value(vtype: int, value: object) -> bytes:
    """value of an ARRAY is (item_type, items)."""
    if vtype == STR:
        return enc_str(value)  # type: ignore[arg-type]
    if vtype == ARR:
        item_type, items = value  # type: ignore[misc]
        body = b"".join(enc_value(item_type, v) for v in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    return struct.pack("<" + FMT[vtype], value)


def kv(key: str, vtype: int, value: object) -> bytes:
    return enc_str(key) + struct.pack("<I", vtype) + enc_value(vtype, value)


def tensor_info(name: str, ne: tuple[int, ...], type_id: int, offset: int) -> bytes:
    dims = struct.pack(f"<{len(ne)}Q", *ne)
    return enc_str(name) + struct.pack("<I", len(ne)) + dims + struct.pack("<IQ", type_id, offset)


def gguf(
    kvs: list[bytes] = (),  # type: ignore[assignment]
    infos: list[bytes] = (),  # type: ignore[assignment]
    data: bytes = b"",
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    n_t = len(infos) if n_tensors is None else n_tensors
    n_k = len(kvs) if n_kv is None else n_kv
    head = magic + struct.pack("<IQQ", version, n_t, n_k) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % alignment) + data


def small_model(**overrides: object) -> bytes:
    """A valid file: metadata of several types and three tensors (F32, Q8_0, F16)."""
    kvs = [
        kv("general.architecture", STR, "llama"),
        kv("llama.block_count", U32, 1),
        kv("tokenizer.ggml.tokens", ARR, (STR, ["<s>", "a", "bc", "é", ""])),
        kv("tokenizer.ggml.scores", ARR, (F32, [0.0, -1.5, 2.0, 3.25, 0.5])),
    ]
    infos = [
        tensor_info("a.weight", (4, 2), 0, 0),  # F32 2x4: 32 bytes
        tensor_info("b.weight", (32, 2), 8, 32),  # Q8_0: 2 blocks of 34 = 68 bytes
        tensor_info("c.weight", (8,), 1, 128),  # F16: 16 bytes
    ]
    data = bytes(range(256))[:144]
    args: dict = {"kvs": kvs, "infos": infos, "data": data} | overrides
    return gguf(**args)


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the real models ------------------------------------------------------------------------


def test_smollm2_golden(smollm2_path: Path) -> None:
    with read_gguf(smollm2_path) as ck:
        assert (ck.version, ck.alignment, ck.data_offset) == (3, 32, 1785664)
        assert len(ck.tensors) == 272 and len(ck.metadata) == 33
        t = ck.tensors["token_embd.weight"]
        assert (t.ggml_type, t.shape, t.offset, t.nbytes) == (
            "Q8_0",
            (49152, 576),
            1785664,
            30081024,
        )
        t = ck.tensors["blk.0.attn_q.weight"]
        assert (t.ggml_type, t.shape, t.offset, t.nbytes) == ("Q4_1", (576, 576), 33806656, 207360)
        assert ck.metadata["llama.block_count"] == 30
        assert ck.metadata["tokenizer.ggml.tokens"][:3] == [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
        ]
        assert ck.metadata["tokenizer.ggml.merges"][0] == "Ġ t"
        assert ck.metadata["tokenizer.ggml.token_type"].dtype == np.int32
        digest = hashlib.sha256(ck.tensor_bytes("output_norm.weight")).hexdigest()
        assert digest == "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559"
        digest = hashlib.sha256(ck.tensor_bytes("blk.0.attn_q.weight")).hexdigest()
        assert digest == "a8a1da23623a60216a214d68aca681284f4188cafcfe40664d8d025d3838038f"


def test_gemma3_golden(gemma3_path: Path) -> None:
    with read_gguf(gemma3_path) as ck:
        assert (ck.version, ck.alignment, ck.data_offset) == (3, 32, 6525120)
        assert len(ck.tensors) == 236 and ck.architecture == "gemma3"
        t = ck.tensors["token_embd.weight"]
        assert (t.ggml_type, t.shape, t.offset) == ("Q8_0", (262144, 640), 6527680)
        assert ck.tensors["blk.0.attn_q.weight"].ggml_type == "Q5_0"
        tokens = ck.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == 262144 and tokens[:3] == ["<pad>", "<eos>", "<bos>"]
        assert tokens[-1] == "<unused6241>"
        assert ck.metadata["tokenizer.ggml.scores"].shape == (262144,)
        assert ck.metadata["general.file_type"] == 15


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest):  # noqa: ANN201
    """gguf-py's GGUFReader per file (slow on Gemma's vocabulary: built once)."""
    cache: dict[Path, object] = {}

    def get(path: Path):  # noqa: ANN202
        if path not in cache:
            from gguf import GGUFReader

            cache[path] = GGUFReader(path)
        return cache[path]

    return get


def assert_same_as_gguf_py(path: Path, reader) -> None:  # noqa: ANN001
    ck = read_gguf_header(path)
    fields = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    assert [f.name for f in fields] == list(ck.metadata)
    for f in fields:
        mine, ref = ck.metadata[f.name], f.contents()
        if isinstance(mine, np.ndarray):
            assert mine.dtype == f.parts[f.data[0]].dtype, f.name
            assert mine.tolist() == ref, f.name
        else:
            assert type(mine) is type(ref) and mine == ref, f.name
    assert [t.name for t in reader.tensors] == list(ck.tensors)
    for rt in reader.tensors:
        t = ck.tensors[rt.name]
        assert t.ggml_type == rt.tensor_type.name
        assert t.shape == tuple(reversed(rt.shape.tolist()))
        assert (t.offset, t.nbytes, t.n_elements) == (rt.data_offset, rt.n_bytes, rt.n_elements)
    assert ck.data_offset == reader.data_offset and ck.alignment == reader.alignment


def test_smollm2_equals_gguf_py(smollm2_path: Path, reference) -> None:  # noqa: ANN001
    reader = reference(smollm2_path)
    assert_same_as_gguf_py(smollm2_path, reader)
    with read_gguf(smollm2_path) as ck:  # and every tensor's bytes
        for rt in reader.tensors:
            assert ck.tensor_bytes(rt.name) == rt.data.tobytes(), rt.name


@pytest.mark.slow
def test_gemma3_equals_gguf_py(gemma3_path: Path, reference) -> None:  # noqa: ANN001
    assert_same_as_gguf_py(gemma3_path, reference(gemma3_path))


# --- synthetic files: every value type -------------------------------------------------------


def test_every_value_type(tmp_path: Path) -> None:
    kvs = [
        kv("u8", U8, 255),
        kv("i8", I8, -128),
        kv("u16", U16, 65535),
        kv("i16", I16, -32768),
        kv("u32", U32, 2**32 - 1),
        kv("i32", I32, -(2**31)),
        kv("f32", F32, 1.5),
        kv("bool", BOOL, True),
        kv("str", STR, "héllo"),
        kv("u64", U64, 2**64 - 1),
        kv("i64", I64, -(2**63)),
        kv("f64", F64, 0.1),
        kv("a_i16", ARR, (I16, [1, -2, 3])),
        kv("a_f64", ARR, (F64, [0.5, 0.25])),
        kv("a_bool", ARR, (BOOL, [True, False, True])),
        kv("a_str", ARR, (STR, ["x", "", "yz"])),
        kv("a_empty", ARR, (U32, [])),
        kv("nested", ARR, (ARR, [(I32, [1, 2]), (STR, ["a"]), (ARR, [(U8, [7])])])),
    ]
    ck = read_gguf_header(write(tmp_path, gguf(kvs)))
    md = ck.metadata
    assert md["u8"] == 255 and md["i8"] == -128 and md["u16"] == 65535 and md["i16"] == -32768
    assert md["u32"] == 2**32 - 1 and md["i32"] == -(2**31)
    assert md["u64"] == 2**64 - 1 and md["i64"] == -(2**63)
    assert md["f32"] == 1.5 and md["f64"] == 0.1 and isinstance(md["f64"], float)
    assert md["bool"] is True and md["str"] == "héllo"
    assert md["a_i16"].dtype == np.int16 and md["a_i16"].tolist() == [1, -2, 3]
    assert md["a_f64"].dtype == np.float64 and md["a_f64"].tolist() == [0.5, 0.25]
    assert md["a_bool"].dtype == np.bool_ and md["a_bool"].tolist() == [True, False, True]
    assert md["a_str"] == ["x", "", "yz"] and md["a_empty"].dtype == np.uint32
    nested = md["nested"]
    assert nested[0].tolist() == [1, 2] and nested[1] == ["a"] and nested[2][0].tolist() == [7]
    assert md["a_i16"].flags.writeable  # a copy: a view of the (closed) read-only mmap is not
    assert ck.tensors == {} and ck.source is None


def test_file_written_by_gguf_py(tmp_path: Path, reference) -> None:  # noqa: ANN001
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "w.gguf"
    w = GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_int64("x.i64", -5)
    w.add_bool("x.flag", False)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "▁a", "é"] * 40)
    w.add_array("x.ints", [1, 2, 3])
    w.add_tensor("f32", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("f16", np.ones((2, 32), dtype=np.float16))
    q8 = np.arange(2 * 34, dtype=np.uint8).reshape(2, 34)  # two Q8_0 rows of 32 elements
    w.add_tensor("q8", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_same_as_gguf_py(path, reference(path))
    with read_gguf(path) as ck:
        assert ck.tensors["q8"].shape == (2, 32) and ck.tensors["q8"].ggml_type == "Q8_0"
        f32 = np.frombuffer(ck.tensor_bytes("f32"), dtype=np.float32)
        assert f32.tolist() == list(range(12))
        assert ck.tensor_bytes("q8") == q8.tobytes()


def test_small_model_layout_and_bytes(tmp_path: Path) -> None:
    with read_gguf(write(tmp_path, small_model())) as ck:
        a, b, c = ck.tensors.values()
        assert (a.shape, a.nbytes, b.shape, b.nbytes, c.nbytes) == ((2, 4), 32, (2, 32), 68, 16)
        assert a.offset == ck.data_offset and ck.data_offset % 32 == 0
        assert ck.tensor_bytes("c.weight") == bytes(range(128, 144))
        assert ck.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "bc", "é", ""]


def test_version_2_and_alignment_64(tmp_path: Path) -> None:
    kvs = [kv("general.alignment", U32, 64)]
    infos = [tensor_info("t", (16,), 0, 0), tensor_info("u", (4,), 0, 64)]
    ck = read_gguf_header(write(tmp_path, gguf(kvs, infos, bytes(80), version=2, alignment=64)))
    assert ck.version == 2 and ck.alignment == 64 and ck.data_offset % 64 == 0
    assert ck.tensors["u"].offset == ck.data_offset + 64


# --- the string-array scanner ----------------------------------------------------------------


def _random_strings(rng: random.Random, n: int) -> list[bytes]:
    pool = [b"", b"a", "▁the".encode(), "日本".encode(), b"\x00x\x00", b"\xff\xfe", b"z" * 300]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.85:
            out.append(bytes(rng.choice(b"abcdef \xc3\xa9") for _ in range(rng.randint(1, 20))))
        elif r < 0.995:
            out.append(rng.choice(pool[:6]))
        else:
            out.append(
                bytes(rng.randrange(256) for _ in range(rng.choice([255, 256, 1000, 70000])))
            )
    return out


@pytest.mark.parametrize("seed", range(6))
def test_string_scan_equals_plain_loop(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    items = _random_strings(rng, rng.choice([70, 1000, 20000]))
    if seed == 0:
        items = [b"\x00" * 8] * 3000  # zero runs: many false candidates
    if seed == 1:
        items = [b""] * 5000
    blob = b"PAD!" + b"".join(enc_str(s) for s in items) + bytes(rng.randrange(64))
    buf = np.frombuffer(blob, dtype=np.uint8)
    got, end = read_string_array(blob, buf, 4, len(items), "x")  # type: ignore[arg-type]
    expected = [s.decode("utf-8", "surrogateescape") for s in items]
    ref: list[str] = []
    assert _plain(blob, 4, len(items), "x", ref) == end  # type: ignore[arg-type]
    assert got == expected == ref
    assert end == 4 + sum(8 + len(s) for s in items)
    assert [s.encode("utf-8", "surrogateescape") for s in got] == items  # lossless


def test_string_scan_rejects_lengths_past_the_end() -> None:
    items = [b"ab"] * 200
    blob = b"".join(enc_str(s) for s in items)
    blob = blob[:-1]  # the last string is one byte short
    buf = np.frombuffer(blob, dtype=np.uint8)
    with pytest.raises(CheckpointError, match=r"string 199 .* claims 2 bytes but only 1"):
        read_string_array(blob, buf, 0, 200, "f.gguf")  # type: ignore[arg-type]


# --- validation: one typed error per rule ----------------------------------------------------

BIG = 2**63 + 5
CASES = {
    "bad magic": (gguf(magic=b"GGML"), r"not a GGUF file \(starts with b'GGML'"),
    "version 1": (gguf(version=1), r"GGUF version 1 is not supported"),
    "version 7": (gguf(version=7), r"unsupported GGUF version 7"),
    "big endian": (gguf(version=3 << 24), r"big-endian GGUF \(version 3\)"),
    "truncated counts": (b"GGUF\x03\x00\x00\x00\x01\x00", r"tensor count at byte 8 needs 8 bytes"),
    "absurd kv count": (gguf(n_kv=10**12), r"claims 0 tensors and 1000000000000 metadata"),
    "string past eof": (
        gguf([enc_str("k") + struct.pack("<IQ", STR, 10**6) + b"abc"]),
        r"string value of 'k' \(1000000 bytes\) at byte \d+ needs 1000000 bytes but the file",
    ),
    "key past eof": (gguf([struct.pack("<Q", BIG)], data=bytes(64)), r"metadata pair 0 .* needs"),
    "array past eof": (
        gguf([enc_str("k") + struct.pack("<IIQ", ARR, I32, 10**9)]),
        r"array 'k' at byte \d+ claims 1000000000 items of 4 bytes but only \d+ bytes are left",
    ),
    "string array past eof": (
        gguf([enc_str("k") + struct.pack("<IIQ", ARR, STR, 2**62)]),
        r"array 'k' .* claims 4611686018427387904 items but only",
    ),
    "unknown value type": (
        gguf([enc_str("k") + struct.pack("<I", 13) + bytes(8)]),
        r"'k' has unknown value type 13",
    ),
    "unknown array type": (
        gguf([enc_str("k") + struct.pack("<IIQ", ARR, 99, 1) + bytes(8)]),
        r"array 'k' at byte \d+ has unknown item type 99",
    ),
    "deep nesting": (
        gguf([enc_str("k") + struct.pack("<I", ARR) + struct.pack("<IQ", ARR, 1) * 9 + bytes(64)]),
        r"arrays nested deeper than 8",
    ),
    "duplicate key": (gguf([kv("a", U8, 1), kv("a", U8, 2)]), r"metadata key 'a' appears twice"),
    "alignment not power of two": (
        gguf([kv("general.alignment", U32, 48)]),
        r"general.alignment is 48",
    ),
    "alignment zero": (gguf([kv("general.alignment", U32, 0)]), r"general.alignment is 0"),
    "alignment string": (
        gguf([kv("general.alignment", STR, "32")]),
        r"must be an integer, not '32'",
    ),
    "n_dims 0": (
        gguf(infos=[tensor_info("t", (), 0, 0)], data=bytes(64)),
        r"'t' .* has 0 dimensions",
    ),
    "n_dims 5": (
        gguf(infos=[tensor_info("t", (1,) * 5, 0, 0)], data=bytes(64)),
        r"has 5 dimensions",
    ),
    "zero dim": (
        gguf(infos=[tensor_info("t", (4, 0), 0, 0)], data=bytes(64)),
        r"dimensions \[4, 0\]",
    ),
    "negative dim": (
        gguf(infos=[tensor_info("t", (BIG,), 0, 0)], data=bytes(64)),
        r"all must be positive",
    ),
    "huge shape": (
        gguf(infos=[tensor_info("t", (2**31, 2**31, 2**31), 0, 0)], data=bytes(64)),
        r"'t' \(F32, shape \[2147483648, 2147483648, 2147483648\]\) "
        r"needs 39614081257132168796771975168 bytes",
    ),
    "not a block multiple": (
        gguf(infos=[tensor_info("t", (33, 2), 2, 0)], data=bytes(64)),
        r"'t' \(Q4_0\) has rows of 33 elements, not a multiple of the Q4_0 block size 32",
    ),
    "duplicate tensor": (
        gguf(infos=[tensor_info("t", (4,), 0, 0), tensor_info("t", (4,), 0, 32)], data=bytes(64)),
        r"tensor 't' appears twice",
    ),
    "misaligned": (
        gguf(infos=[tensor_info("t", (4,), 0, 8)], data=bytes(64)),
        r"tensor 't' data offset 8 is not a multiple of the alignment 32",
    ),
    "past eof": (
        gguf(infos=[tensor_info("blk.3.attn_q.weight", (64,), 0, 0)], data=bytes(200)),
        r"tensor 'blk.3.attn_q.weight' \(F32, shape \[64\], 256 bytes\) ends at byte 352 "
        r"but the file has 296 bytes \(truncated download\?\)",
    ),
    "overlap": (
        gguf(infos=[tensor_info("a", (16,), 0, 0), tensor_info("b", (4,), 0, 32)], data=bytes(96)),
        r"tensor 'a' \(F32, shape \[16\]\) occupies bytes 96..160 and overlaps tensor 'b' which "
        r"starts at byte 128",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors(tmp_path: Path, case: str) -> None:
    data, pattern = CASES[case]
    path = write(tmp_path, data)
    with pytest.raises(CheckpointError, match=pattern) as info:
        read_gguf(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unknown_ggml_type_lists_the_id(tmp_path: Path) -> None:
    path = write(tmp_path, gguf(infos=[tensor_info("t", (32,), 4, 0)], data=bytes(64)))
    with pytest.raises(UnsupportedError, match=r"'t' has ggml type id 4, which .* \(known: 0 F32"):
        read_gguf(path)


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope.gguf: no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(CheckpointError, match=r"the file is empty \(0 bytes\)"):
        read_gguf(write(tmp_path, b""))
    with pytest.raises(CheckpointError, match=r"is a directory"):
        read_gguf(tmp_path)


@pytest.mark.parametrize("cut", [3, 7, 23, 40, 60, 100, 150, 200, 260])
def test_truncated_small_model(tmp_path: Path, cut: int) -> None:
    data = small_model()
    assert len(data) > cut
    with pytest.raises(CheckpointError, match=r"truncated"):
        read_gguf(write(tmp_path, data[:cut]))


def test_header_only_checkpoint(tmp_path: Path) -> None:
    ck = read_gguf_header(write(tmp_path, small_model()))
    assert ck.source is None and len(ck.tensors) == 3
    with pytest.raises(CheckpointError, match=r"opened header-only; no tensor bytes to read"):
        ck.tensor_bytes("a.weight")
    ck.close()
