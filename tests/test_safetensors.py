"""SafeTensors reader: files from our tiny writer and from the safetensors package (when
installed), sharded folders with an index and config.json, and one error per validation rule."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.open import open_checkpoint
from warmload.formats.safetensors import read_safetensors

MODES = ("mmap", "memory", "read")
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
ITEMSIZE["BOOL"] = 1


def st_bytes(
    tensors: dict[str, tuple[str, list[int], bytes]],
    metadata: dict[str, str] | None = None,
    header: dict | None = None,
) -> bytes:
    """A .safetensors file: 8-byte header length, JSON padded with spaces to 8, the data."""
    entries: dict = {"__metadata__": metadata} if metadata else {}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        entries[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    head = json.dumps(header if header is not None else entries).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def sample() -> dict[str, tuple[str, list[int], bytes]]:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    return {
        "w.f32": ("F32", [3, 4], f32.tobytes()),
        "w.f16": ("F16", [2, 2], f32[:1].astype(np.float16).tobytes()),
        "w.bf16": ("BF16", [4], (f32[0].view(np.uint32) >> 16).astype(np.uint16).tobytes()),
        "w.f64": ("F64", [2], np.array([0.5, -1.0]).tobytes()),
        "i.i64": ("I64", [1], np.array([-7], dtype=np.int64).tobytes()),
        "i.i32": ("I32", [2], np.array([1, 2], dtype=np.int32).tobytes()),
        "i.i8": ("I8", [3], np.array([-1, 0, 1], dtype=np.int8).tobytes()),
        "i.u8": ("U8", [2], b"\x00\xff"),
        "mask": ("BOOL", [3], b"\x01\x00\x01"),
        "scalar": ("F32", [], np.float32(3.5).tobytes()),
        "empty": ("F32", [0, 3], b""),
    }


def test_every_dtype_round_trips(tmp_path: Path) -> None:
    tensors = sample()
    path = write(tmp_path, "m.safetensors", st_bytes(tensors, {"format": "pt"}))
    for mode in MODES:
        with open_checkpoint(path, load_mode=mode) as ck:
            assert ck.format == "safetensors" and ck.metadata == {"format": "pt"}
            assert list(ck.tensors) == list(tensors)
            for name, (dtype, shape, raw) in tensors.items():
                t = ck.tensors[name]
                assert (t.ggml_type, t.shape, t.nbytes, t.file) == (
                    dtype,
                    tuple(shape),
                    len(raw),
                    str(path),
                )
                assert bytes(ck.tensor_bytes(name)) == raw, (mode, name)


def test_offsets_are_absolute(tmp_path: Path) -> None:
    tensors = sample()
    blob = st_bytes(tensors)
    (n,) = struct.unpack("<Q", blob[:8])
    ck = read_safetensors(write(tmp_path, "m.safetensors", blob))
    assert ck.tensors["w.f32"].offset == 8 + n
    assert ck.tensors["w.f16"].offset == 8 + n + 48


def test_file_from_the_safetensors_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    arrays = {
        "a": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "b": np.array([[1, -2]], dtype=np.int64),
        "c": np.ones(5, dtype=np.float16),
        "d": np.array([True, False]),
        "e": np.arange(6, dtype=np.uint8),
    }
    path = tmp_path / "ref.safetensors"
    st.save_file(arrays, str(path), metadata={"format": "np"})
    with open_checkpoint(path) as ck:
        assert ck.metadata == {"format": "np"}
        types = {"a": "F32", "b": "I64", "c": "F16", "d": "BOOL", "e": "U8"}
        for name, array in arrays.items():
            t = ck.tensors[name]
            assert t.ggml_type == types[name] and t.shape == array.shape
            got = np.frombuffer(ck.tensor_bytes(name), dtype=array.dtype).reshape(array.shape)
            assert np.array_equal(got, array)


def make_sharded(folder: Path) -> dict[str, tuple[str, list[int], bytes]]:
    tensors = sample()
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:5],
        "model-00002-of-00002.safetensors": names[5:],
    }
    weight_map = {}
    for shard, members in shards.items():
        write(folder, shard, st_bytes({n: tensors[n] for n in members}, {"format": "pt"}))
        weight_map |= {n: shard for n in members}
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    write(folder, "model.safetensors.index.json", json.dumps(index))
    write(folder, "config.json", json.dumps({"model_type": "llama", "hidden_size": 4}))
    return tensors


def test_sharded_folder(tmp_path: Path) -> None:
    tensors = make_sharded(tmp_path)
    for mode in MODES:
        with open_checkpoint(tmp_path, load_mode=mode) as ck:
            assert ck.path == tmp_path and ck.format == "safetensors"
            assert ck.metadata["config"] == {"model_type": "llama", "hidden_size": 4}
            assert ck.metadata["format"] == "pt"
            assert sorted(ck.tensors) == sorted(tensors)
            assert Path(ck.tensors["w.f32"].file).name == "model-00001-of-00002.safetensors"
            assert Path(ck.tensors["mask"].file).name == "model-00002-of-00002.safetensors"
            for name, (_, _, raw) in tensors.items():
                assert bytes(ck.tensor_bytes(name)) == raw


def test_folder_without_index_merges_files(tmp_path: Path) -> None:
    tensors = sample()
    write(tmp_path, "a.safetensors", st_bytes({"x": tensors["w.f32"]}))
    write(tmp_path, "b.safetensors", st_bytes({"y": tensors["i.i8"]}))
    with open_checkpoint(tmp_path) as ck:
        assert sorted(ck.tensors) == ["x", "y"] and "config" not in ck.metadata
    write(tmp_path, "c.safetensors", st_bytes({"y": tensors["i.i8"]}))
    with pytest.raises(
        CheckpointError, match=r"tensor 'y' is in both b.safetensors and c.safetensors"
    ):
        open_checkpoint(tmp_path)


def test_index_errors(tmp_path: Path) -> None:
    make_sharded(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"index.json: names 1 shard file\(s\) that are not in"
    ):
        open_checkpoint(tmp_path)
    index = {"weight_map": {"ghost": "model-00001-of-00002.safetensors"}}
    write(tmp_path, "model.safetensors.index.json", json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"puts tensor 'ghost' in model-00001-of-00002.safetensors but"
    ):
        open_checkpoint(tmp_path)
    write(tmp_path, "model.safetensors.index.json", "{not json")
    with pytest.raises(CheckpointError, match=r"index.json: not valid JSON"):
        open_checkpoint(tmp_path)


def _entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _raw_header(header_json: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    n = len(header_json) if length is None else length
    return struct.pack("<Q", n) + header_json + data


def _h(header: dict, data_len: int = 0) -> bytes:
    return st_bytes({}, header=header) + bytes(data_len)


E = CheckpointError
CASES = {
    "too short": (b"\x01\x00", E, r"2 bytes is too short for a SafeTensors file"),
    "absurd header": (
        _raw_header(b"{}", length=2**40),
        E,
        r"header length 1099511627776 is impossible for a file of 10 bytes",
    ),
    "bad json": (_raw_header(b"{nope"), E, r"the header: not valid JSON"),
    "json list": (_raw_header(b"[1, 2]"), E, r"the header is JSON list, not an object"),
    "missing fields": (_h({"t": {"dtype": "F32"}}), E, r"'t' needs dtype, shape and data_offsets"),
    "unknown dtype": (
        _h({"t": _entry("F8_E4M3", [1], [0, 1])}, 1),
        UnsupportedError,
        r"'t' has dtype 'F8_E4M3'; supported: F64, F32",
    ),
    "bad shape": (_h({"t": _entry("F32", [2, -1], [0, 8])}, 8), E, r"shape \[2, -1\]; want ints"),
    "size mismatch": (
        _h({"t": _entry("F32", [3], [0, 8])}, 12),
        E,
        r"'t' \(F32, shape \[3\]\) needs 12 bytes but its data_offsets \[0, 8\] span 8",
    ),
    "reversed offsets": (
        _h({"t": _entry("U8", [0], [8, 4])}, 8),
        E,
        r"data_offsets \[8, 4\]; want \[begin, end\]",
    ),
    "past eof": (
        _h({"t": _entry("F32", [4], [0, 16])}, 12),
        E,
        r"tensor 't' ends at byte \d+ but the file has \d+ bytes \(truncated download\?\)",
    ),
    "overlap": (
        _h({"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [4, 12])}, 12),
        E,
        r"tensor 'a' \(bytes \d+..\d+\) overlaps tensor 'b'",
    ),
    "bad metadata": (_h({"__metadata__": [1]}), E, r"__metadata__ must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors(tmp_path: Path, case: str) -> None:
    data, error, pattern = CASES[case]
    path = write(tmp_path, "bad.safetensors", data)
    with pytest.raises(error, match=pattern) as info:
        read_safetensors(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"gone.safetensors: no such file"):
        read_safetensors(tmp_path / "gone.safetensors")


def test_hub_cache_snapshot_links_into_its_blobs_are_followed(tmp_path: Path) -> None:
    """models--org--name/snapshots/REV/* are symlinks to ../../blobs/HASH: allowed; anything
    else outside the folder is refused (issue 17 item 15)."""
    import hostile

    repo = tmp_path / "models--org--tiny"
    source = hostile.hf_folder(tmp_path / "src")
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for i, name in enumerate(("model.safetensors", "config.json")):
        blob = repo / "blobs" / f"hash{i}"
        blob.write_bytes((source / name).read_bytes())
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / f"hash{i}")
    with open_checkpoint(snapshot) as ck:
        assert len(ck.tensors) == len(hostile.HF_SHAPES) and ck.metadata["config"]["vocab_size"]
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(source / "config.json")  # outside repo and blobs
    with pytest.raises(CheckpointError, match="outside the model folder"):
        open_checkpoint(snapshot)


def test_shards_in_a_subfolder_are_inside(tmp_path: Path) -> None:
    import hostile

    hostile.hf_folder(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "model.safetensors").rename(tmp_path / "weights" / "a.safetensors")
    index = {"weight_map": {n: "weights/a.safetensors" for n in hostile.HF_SHAPES}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_checkpoint(tmp_path) as ck:
        assert len(ck.tensors) == len(hostile.HF_SHAPES)
