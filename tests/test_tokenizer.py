"""Tokenizer ground truth: llama.cpp's ids for its vocab fixtures and for the two packaged models
(tests/golden/tokenizer_ids.json, made by scripts/make_tokenizer_goldens.py with
llama-cpp-python), decoded text, special ids, and the streaming decoder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex

from warmload.errors import RequestError, TokenizerError, UnsupportedError
from warmload.formats.open import open_checkpoint
from warmload.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from warmload.tokenizer.pretokenize import PRE_NAMES, find_pre_tokenizer
from warmload.tokenizer.spm_merges import spm_merges

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "tokenizer_ids.json").read_text(encoding="utf-8")
)
FIXTURES = ("llama-spm", "llama-bpe", "gpt-2", "starcoder")
# more of llama.cpp's fixtures (qwen2, deepseek-*, command-r, falcon, ...) are tested when present
_SHARED_VOCAB = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vocab"
EXTRA_FIXTURES = sorted(
    {p.name[len("ggml-vocab-") : -len(".gguf.inp")] for p in _SHARED_VOCAB.glob("*.gguf.inp")}
    - set(FIXTURES)
)
SEPARATOR = "\n__ggml_vocab_test__\n"


def fixture_cases(vocab_dir: Path, name: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs: every input is followed by the separator; one .out line per input."""
    gguf = vocab_dir / f"ggml-vocab-{name}.gguf"
    inputs = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split(SEPARATOR)
    assert inputs[-1] == ""
    inputs = inputs[:-1]
    lines = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(inputs) == len(lines) > 40
    return [(text, [int(x) for x in line.split()]) for text, line in zip(inputs, lines)]


@pytest.fixture(scope="module")
def fixture_tokenizers(vocab_dir: Path) -> dict[str, Tokenizer]:
    return {name: load_tokenizer(vocab_dir / f"ggml-vocab-{name}.gguf") for name in FIXTURES}


@pytest.fixture(scope="module")
def model_tokenizers(smollm2_path: Path, gemma3_path: Path) -> dict[str, Tokenizer]:
    return {"smollm2": load_tokenizer(smollm2_path), "gemma3-270m": load_tokenizer(gemma3_path)}


@pytest.mark.parametrize("name", FIXTURES)
def test_llama_cpp_vocab_fixtures(vocab_dir, fixture_tokenizers, name):
    tokenizer = fixture_tokenizers[name]
    wrong = []
    for text, expected in fixture_cases(vocab_dir, name):
        got = tokenizer.encode(text, add_special=False, parse_special=False)
        if got != expected:
            wrong.append((text, got, expected))
    assert wrong == []


@pytest.mark.parametrize("name", EXTRA_FIXTURES)
def test_more_llama_cpp_vocab_fixtures(vocab_dir, name):
    try:
        tokenizer = load_tokenizer(vocab_dir / f"ggml-vocab-{name}.gguf")
    except UnsupportedError as exc:
        pytest.skip(str(exc))  # e.g. bert/t5/gemma4 vocabs
    cases = fixture_cases(vocab_dir, name)
    assert [tokenizer.encode(text, False) for text, _ in cases] == [ids for _, ids in cases]


def test_fixture_flags(fixture_tokenizers):
    spm = fixture_tokenizers["llama-spm"]
    assert (spm.model, spm.add_bos, spm.add_space_prefix, spm.bos_id, spm.eos_id) == (
        "llama", True, True, 1, 2,
    )  # fmt: skip
    assert spm.stop_ids == {2}
    bpe = fixture_tokenizers["llama-bpe"]
    assert (bpe.model, bpe.pre, bpe.add_bos, bpe.bos_id) == ("gpt2", "llama-bpe", True, 128000)
    assert bpe.encode("Hi") == [128000, 13347]
    assert fixture_tokenizers["gpt-2"].encode("Hi") == [17250]  # gpt-2 adds no BOS


@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_golden_ids(model_tokenizers, model):
    tokenizer = model_tokenizers[model]
    cases = GOLDEN["models"][model]["encode"]
    wrong = [
        (c["text"], c["add_special"], c["parse_special"])
        for c in cases
        if tokenizer.encode(c["text"], c["add_special"], c["parse_special"]) != c["ids"]
    ]
    assert wrong == []
    assert len(cases) > 100


@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_golden_decode_and_stream(model_tokenizers, model):
    tokenizer = model_tokenizers[model]
    for case in GOLDEN["models"][model]["decode"]:
        ids, skip = case["ids"], case["skip_special"]
        assert tokenizer.decode(ids, skip_special=skip) == case["text"], ids
        decoder = tokenizer.stream_decoder(skip_special=skip)
        streamed = [decoder.push(i) for i in ids] + [decoder.flush()]
        assert "".join(streamed) == case["text"], ids
        assert all("\ufffd" not in s for s in streamed) or "\ufffd" in case["text"]


@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_golden_special_ids(model_tokenizers, model):
    tokenizer = model_tokenizers[model]
    special = GOLDEN["models"][model]["special"]
    assert tokenizer.vocab_size == special["n_tokens"]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.eot_id) == (
        special["bos"], special["eos"], special["eot"],
    )  # fmt: skip
    assert (tokenizer.add_bos, tokenizer.add_eos) == (special["add_bos"], special["add_eos"])
    assert sorted(tokenizer.stop_ids) == special["eog"]
    control = [i for a, b in special["control"] for i in range(a, b + 1)]
    special_ids = np.nonzero([tokenizer.is_special(i) for i in range(tokenizer.vocab_size)])[0]
    assert special_ids.tolist() == control


def test_smollm2_specials(model_tokenizers):
    tokenizer = model_tokenizers["smollm2"]
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.encode("<|im_end|>", parse_special=True) == [2]
    assert len(tokenizer.encode("<|im_end|>", parse_special=False)) > 1
    assert tokenizer.stop_ids == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    assert tokenizer.decode([1, 19556, 2], skip_special=True) == "Hello"
    assert tokenizer.decode([1, 19556, 2], skip_special=False) == "<|im_start|>Hello<|im_end|>"
    assert tokenizer.token_to_piece(2) == b"<|im_end|>"
    assert tokenizer.token_to_piece(2, special=False) == b""


def test_gemma3_vocab(model_tokenizers):
    tokenizer = model_tokenizers["gemma3-270m"]
    assert (tokenizer.model, tokenizer.vocab_size, tokenizer.add_space_prefix) == (
        "llama", 262144, False,
    )  # fmt: skip
    assert tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>"
    assert tokenizer.encode("Hello world") == [2, 9259, 1902]
    # user-defined tokens ("\n\n", runs of spaces, HTML tags) are cut out even without
    # parse_special; control tokens only with it
    assert tokenizer.encode("a\n\nb", add_special=False) == [236746, 108, 236763]
    assert tokenizer.encode("<start_of_turn>", add_special=False, parse_special=True) == [105]
    assert 105 not in tokenizer.encode("<start_of_turn>", add_special=False)
    assert tokenizer.token_to_piece(tokenizer.token_to_id("<0x41>")) == b"A"
    assert tokenizer.token_to_piece(9259) == b"Hello"
    assert tokenizer.token_to_piece(1902) == b" world"


def test_space_prefix_strip_follows_llama_cpp(fixture_tokenizers):
    spm = fixture_tokenizers["llama-spm"]
    ids = spm.encode("Hello world")
    assert ids == [1, 15043, 3186]
    # llama_detokenize: the first piece loses one leading space; a leading BOS takes that strip
    assert spm.decode(ids[1:]) == "Hello world"
    assert spm.decode(ids) == " Hello world"
    assert spm.decode(ids, skip_special=False) == "<s> Hello world"
    assert spm.decode(spm.encode("  two", add_special=False)) == "  two"


def test_stream_decoder_holds_back_split_characters(model_tokenizers):
    gemma = model_tokenizers["gemma3-270m"]
    ids = gemma.encode("🫨", add_special=False)  # not in the vocab: four <0xXX> byte tokens
    assert [gemma.id_to_token(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    decoder = gemma.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "", "", "🫨"]
    assert decoder.flush() == ""
    smol = model_tokenizers["smollm2"]
    ids = smol.encode("日本語😀", add_special=False)
    assert [smol.token_to_piece(i) for i in ids][0] not in (b"\xe6\x97\xa5", b"")
    decoder = smol.stream_decoder()
    out = [decoder.push(i) for i in ids]
    assert "".join(out) == "日本語😀" and all("\ufffd" not in s for s in out)


def test_stream_decoder_flushes_an_incomplete_tail(model_tokenizers):
    gemma = model_tokenizers["gemma3-270m"]
    decoder = gemma.stream_decoder()
    assert decoder.push(9259) == "Hello"
    assert decoder.push(gemma.token_to_id("<0xF0>")) == ""
    assert decoder.flush() == "\ufffd"
    assert gemma.decode([9259, gemma.token_to_id("<0xF0>")]) == "Hello\ufffd"


def test_stream_decoder_skips_special_tokens(model_tokenizers):
    gemma = model_tokenizers["gemma3-270m"]
    ids = [2, 105, 9259, 106]
    decoder = gemma.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "", "Hello", ""]
    decoder = gemma.stream_decoder(skip_special=False)
    assert "".join(decoder.push(i) for i in ids) == "<bos><start_of_turn>Hello<end_of_turn>"


def test_concurrent_encodes_keep_their_parse_special(model_tokenizers):
    tokenizer = model_tokenizers["smollm2"]
    text = "<|im_start|>user"
    parsed = tokenizer.encode(text, parse_special=True)
    plain = tokenizer.encode(text, parse_special=False)
    assert parsed != plain
    errors = []

    def work(parse: bool) -> None:
        for _ in range(200):
            if tokenizer.encode(text, parse_special=parse) != (parsed if parse else plain):
                errors.append(parse)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_bad_input_is_a_request_error(model_tokenizers):
    tokenizer = model_tokenizers["smollm2"]
    with pytest.raises(RequestError) as info:
        tokenizer.decode([49152])
    assert info.value.param == "ids" and "49152" in str(info.value)
    with pytest.raises(RequestError):
        tokenizer.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        tokenizer.encode("lone surrogate \ud800")


def test_metadata_errors(vocab_dir):
    with open_checkpoint(vocab_dir / "ggml-vocab-gpt-2.gguf") as checkpoint:
        metadata = dict(checkpoint.metadata)
    with pytest.raises(UnsupportedError, match="'no-such-pre'.*supported: .*llama-bpe"):
        build_tokenizer({**metadata, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(UnsupportedError, match="'bert'"):
        build_tokenizer({**metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2"})
    short = {**metadata, "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"][:5]}
    with pytest.raises(TokenizerError, match="5 entries but the vocab has 50257"):
        build_tokenizer(short)


def test_spm_merges_match_every_split_by_brute_force(vocab_dir):
    with open_checkpoint(vocab_dir / "ggml-vocab-llama-spm.gguf") as checkpoint:
        tokens = checkpoint.metadata["tokenizer.ggml.tokens"]
        scores = checkpoint.metadata["tokenizer.ggml.scores"]
    index = {t: i for i, t in enumerate(tokens)}
    expected = []  # transformers' SentencePieceExtractor order
    for tid in sorted(range(len(tokens)), key=lambda i: -scores[i]):
        token = tokens[tid]
        splits = [(token[:k], token[k:]) for k in range(1, len(token))]
        splits = [s for s in splits if s[0] in index and s[1] in index]
        expected += sorted(splits, key=lambda s: (index[s[0]], index[s[1]]))
    assert spm_merges(tokens, scores) == expected


def test_every_pre_tokenizer_compiles():
    for name in PRE_NAMES:
        for regex in find_pre_tokenizer(name).regexes:
            Regex(regex)  # raises on a regex onig cannot read
    assert find_pre_tokenizer("llama-bpe").ignore_merges
    assert not find_pre_tokenizer("smollm").ignore_merges


def test_spm_merges_cache_round_trip(vocab_dir, tmp_path, monkeypatch):
    import warmload.tokenizer.spm_merges as spm

    with open_checkpoint(vocab_dir / "ggml-vocab-llama-spm.gguf") as checkpoint:
        metadata = dict(checkpoint.metadata)
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path))
    fresh = build_tokenizer(metadata)
    (cached_file,) = (tmp_path / "tokenizer").glob("spm-merges-*.bin")
    expected = spm_merges(tokens, scores)
    assert spm_merges(tokens, scores, tmp_path / "tokenizer") == expected

    def must_not_recompute(*args):
        raise AssertionError("merges recomputed although cached")

    monkeypatch.setattr(spm, "merge_ids", must_not_recompute)
    again = build_tokenizer(metadata)
    text = "Hello world, ça va? 日本語 😀 ▁▁ 3333"
    assert again.encode(text) == fresh.encode(text) == [1, *fresh.encode(text, False)]
    monkeypatch.undo()
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path))
    cached_file.write_bytes(b"not a cache file")  # a damaged cache is recomputed, not trusted
    assert spm_merges(tokens, scores, tmp_path / "tokenizer") == expected
    assert build_tokenizer(metadata, use_cache=False).encode(text) == fresh.encode(text)


@pytest.mark.parametrize("damage", ["empty", "flip", "empty-array", "truncate", "npy"])
def test_damaged_spm_merges_cache_is_recomputed_with_one_warning(
    vocab_dir, tmp_path, monkeypatch, caplog, damage
):
    import io
    import logging

    from warmload import caches

    monkeypatch.setattr(caches, "_warned", set())
    monkeypatch.setenv("WARMLOAD_CACHE_DIR", str(tmp_path))
    with open_checkpoint(vocab_dir / "ggml-vocab-llama-spm.gguf") as checkpoint:
        metadata = dict(checkpoint.metadata)
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    folder = tmp_path / "tokenizer"
    expected = spm_merges(tokens, scores, folder)
    (cached_file,) = folder.glob("spm-merges-*.bin")
    data = bytearray(cached_file.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "flip":
        data[len(data) // 2] ^= 0x04  # one bit of one merge id
    elif damage == "empty-array":  # a valid header over an empty payload
        data = data[: data.index(b"\n", 9) + 1]
    elif damage == "truncate":
        data = data[:-3]
    else:  # what version 1 kept: an .npy file, here an empty but valid array
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((0, 2), np.int32))
        data = bytearray(buffer.getvalue())
    cached_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert spm_merges(tokens, scores, folder) == expected
        assert spm_merges(tokens, scores, folder) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0]
    tokenizer = build_tokenizer(dict(metadata))  # rebuilt entry is trusted again, same ids
    assert tokenizer.encode("Hello world") == build_tokenizer(metadata, use_cache=False).encode(
        "Hello world"
    )


def _spm_metadata() -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁a", "b"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.zeros(len(tokens), np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [6] * 256 + [1, 1], np.int32),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update({"tokenizer.ggml.tokens": [[t] for t in m["tokenizer.ggml.tokens"]]}),
         "must be an array of strings, but item 0 is a list"),
        (lambda m: m["tokenizer.ggml.tokens"].__setitem__(260, "a\udcc3("),
         r"item 260 of 'tokenizer.ggml.tokens' is not valid UTF-8 \(b'a\\xc3\('\)"),
        (lambda m: m["tokenizer.ggml.tokens"].__setitem__(3 + 65, "A"),
         "token 68 has type BYTE but its text is 'A'"),
        (lambda m: m["tokenizer.ggml.tokens"].__setitem__(3 + 65, "<0xZZ>"),
         "token 68 has type BYTE"),
        (lambda m: m.update({"tokenizer.ggml.token_type": [[1, 2]] * 261}),
         "must be a numeric array"),
        (lambda m: m.update({"tokenizer.ggml.scores": [[1.0], [2.0, 3.0]]}),
         "must be a numeric array"),
        (lambda m: m.update({"tokenizer.ggml.tokens": 7}), "no 'tokenizer.ggml.tokens'"),
    ],
)  # fmt: skip
def test_hostile_vocab_metadata_is_a_tokenizer_error(change, message):
    """Issue 17 item 11: arrays of arrays, invalid UTF-8, a BYTE token that is not <0xXX>."""
    metadata = _spm_metadata()
    build_tokenizer(dict(metadata), use_cache=False)  # the unchanged vocab builds
    change(metadata)
    with pytest.raises(TokenizerError, match=message):
        build_tokenizer(metadata, use_cache=False)


@pytest.mark.parametrize("merges", [[["a", "b"]], ["a b", 5], ["a \udcff"]])
def test_hostile_bpe_merges_are_a_tokenizer_error(merges):
    tokens = ["a", "b", "ab", "<|endoftext|>"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
    }
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        build_tokenizer(metadata, use_cache=False)
