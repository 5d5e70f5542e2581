"""The endpoints and fields apps use, against a live server on SmolLM2: n choices, prompt
lists, echo with logprobs, logit_bias, structured output (always valid JSON for the schema),
embeddings, Ollama's show/version/tags/pull, aliases and a fallback model, tool calls forced
through a Hermes-style template."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")

from live_server import LiveServer, free_port  # noqa: E402

from warmload.config import LoadConfig, ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def live(smollm2_path, tmp_path_factory):
    config = ServerConfig(
        models=(("smollm2", str(smollm2_path)),),
        models_dir=str(tmp_path_factory.mktemp("models")),
        port=free_port(),
        load=LoadConfig(ctx=512, threads=2),
        aliases=(("gpt-3.5-turbo", "smollm2"),),
        fallback_model="smollm2",
    )
    with LiveServer(config) as server:
        yield server


def engine(live):
    return live.state.cache.entries["smollm2"].engine


def test_n_choices_are_independent_rows_and_prompt_lists_keep_order(live):
    body = {"prompt": ["The sky is", "Two plus two is"], "n": 2, "max_tokens": 6}
    code, data = live.post("/v1/completions", {**body, "temperature": 0})
    assert code == 200
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in data["choices"]]
    used = 0
    for prompt, pair in zip(body["prompt"], (texts[:2], texts[2:])):
        expected = engine(live).generate(prompt, max_tokens=6, temperature=0)
        assert pair == [expected.text, expected.text]  # greedy: both rows give the same
        used += 2 * len(expected.token_ids)
    assert data["usage"]["completion_tokens"] == used
    code, sampled = live.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Tell a story"}], "n": 3, "max_tokens": 12}
        | {"temperature": 1.0, "seed": 7},
    )
    assert code == 200 and len(sampled["choices"]) == 3
    assert len({c["message"]["content"] for c in sampled["choices"]}) > 1  # seed, seed+1, ...


def test_streamed_n_choices_match_non_streamed(live):
    body = {"prompt": "Once upon a time", "n": 2, "max_tokens": 8, "temperature": 0.9, "seed": 5}
    _, whole = live.post("/v1/completions", body)
    code, raw, _ = live.request(
        "POST", "/v1/completions", json.dumps(body | {"stream": True}).encode()
    )
    texts = {0: "", 1: ""}
    finishes = {}
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                texts[choice["index"]] += choice["text"]
                if choice["finish_reason"]:
                    finishes[choice["index"]] = choice["finish_reason"]
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]
    assert set(finishes) == {0, 1}


def test_echo_with_logprobs_scores_the_prompt(live):
    prompt = "The capital of France is Paris"
    code, data = live.post(
        "/v1/completions", {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0}
    )
    assert code == 200
    choice = data["choices"][0]
    assert choice["text"] == prompt
    lp = choice["logprobs"]
    ids = engine(live).encode_prompt(prompt)
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None
    expected = engine(live).logits(ids).log_softmax(-1)
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(expected[i - 1, ids[i]]), abs=0.05)
    code, data = live.post(
        "/v1/completions",
        {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 3, "temperature": 0},
    )
    assert data["choices"][0]["text"].startswith(prompt)
    assert len(data["choices"][0]["logprobs"]["tokens"]) == len(ids) + 3


def test_logit_bias_bans_and_forces_tokens(live):
    messages = [{"role": "user", "content": "Say hello"}]
    base = {"messages": messages, "max_tokens": 6, "temperature": 0}
    _, plain = live.post("/v1/chat/completions", base)
    first = engine(live).tokenizer.encode(plain["choices"][0]["message"]["content"], False)[0]
    _, banned = live.post("/v1/chat/completions", base | {"logit_bias": {str(first): -100}})
    text = banned["choices"][0]["message"]["content"]
    assert engine(live).tokenizer.encode(text, False)[0] != first
    forced = engine(live).tokenizer.encode(" banana", False)[0]
    _, out = live.post("/v1/chat/completions", base | {"logit_bias": {str(forced): 100}})
    assert out["choices"][0]["message"]["content"].count("banana") >= 3


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def check_schema(value):
    assert set(value) == {"name", "age", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 20
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 150
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_is_always_valid(live, seed):
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    code, data = live.post(
        "/v1/chat/completions",
        {"messages": messages, "response_format": fmt, "max_tokens": 120}
        | {"temperature": 1.0, "seed": seed},
    )
    assert code == 200, data
    assert data["choices"][0]["finish_reason"] == "stop"
    check_schema(json.loads(data["choices"][0]["message"]["content"]))


def test_eight_rows_at_high_temperature_all_match_the_schema(live):
    messages = [{"role": "user", "content": "Invent a person."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    code, data = live.post(
        "/v1/chat/completions",
        {"messages": messages, "response_format": fmt, "max_tokens": 150, "n": 8}
        | {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 11},
    )
    assert code == 200 and len(data["choices"]) == 8
    for choice in data["choices"]:
        assert choice["finish_reason"] == "stop", choice
        check_schema(json.loads(choice["message"]["content"]))


def test_json_mode_and_ollama_format(live):
    messages = [{"role": "user", "content": "List two fruits."}]
    code, data = live.post(
        "/v1/chat/completions",
        {"messages": messages, "response_format": {"type": "json_object"}, "max_tokens": 80},
    )
    assert code == 200
    text = data["choices"][0]["message"]["content"]
    if data["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
    body = {"model": "smollm2", "messages": messages, "stream": False, "format": SCHEMA}
    code, data = live.post("/api/chat", body | {"options": {"seed": 4, "num_predict": 120}})
    assert code == 200 and data["done_reason"] == "stop"
    check_schema(json.loads(data["message"]["content"]))
    code, data = live.post(
        "/v1/completions", {"prompt": "Answer:", "grammar": 'root ::= "yes" | "no"'}
    )
    assert code == 200 and data["choices"][0]["text"] in ("yes", "no")


def test_embeddings_openai_and_ollama(live):
    texts = ["The cat sat on the mat.", "A dog", "Quantum chromodynamics"]
    code, data = live.post("/v1/embeddings", {"input": texts, "model": "smollm2"})
    assert code == 200 and [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in data["data"]])
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # one at a time gives the same vector as in the batch
    _, one = live.post("/v1/embeddings", {"input": texts[1]})
    assert np.dot(vectors[1], one["data"][0]["embedding"]) > 0.9999
    _, b64 = live.post("/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), "<f4")
    assert np.dot(decoded, vectors[0]) > 0.999  # alone vs in a batch: rounding differs
    code, data = live.post("/api/embed", {"model": "smollm2", "input": texts})
    assert code == 200 and np.allclose(np.array(data["embeddings"]), vectors, atol=1e-5)
    code, legacy = live.post("/api/embeddings", {"model": "smollm2", "prompt": texts[0]})
    raw = np.array(legacy["embedding"])
    assert np.linalg.norm(raw) > 2  # unnormalized, the same direction
    assert np.dot(raw / np.linalg.norm(raw), vectors[0]) > 0.999
    code, data = live.post("/v1/embeddings", {"input": ""})
    assert code == 400 and data["error"]["param"] == "input"
    code, data = live.post("/v1/embeddings", {"input": "x", "dimensions": 8})
    assert code == 400 and data["error"]["param"] == "dimensions"


def test_ollama_show_version_tags(live, smollm2_path):
    code, data = live.get("/api/version")
    assert code == 200 and data["version"]
    code, data = live.get("/api/tags")
    item = data["models"][0]
    assert item["size"] == smollm2_path.stat().st_size
    assert item["details"]["format"] == "gguf" and item["details"]["family"] == "llama"
    assert item["details"]["quantization_level"] == "Q4_1"
    code, data = live.post("/api/show", {"model": "smollm2"})
    assert code == 200
    assert data["model_info"]["general.architecture"] == "llama"
    assert data["model_info"]["llama.context_length"] == 8192
    assert "<|im_start|>" in data["template"] and "num_ctx 8192" in data["parameters"]
    assert "tools" not in data["capabilities"]


def test_aliases_and_the_fallback_model(live):
    for name in ("gpt-3.5-turbo", "gpt-4o-mini-anything"):
        code, data = live.post(
            "/v1/chat/completions",
            {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        assert code == 200 and data["model"] == "smollm2"
    assert "gpt-3.5-turbo" in [m["id"] for m in live.get("/v1/models")[1]["data"]]


def test_fill_in_the_middle_needs_fim_tokens(live):
    code, data = live.post("/v1/completions", {"prompt": "def f(", "suffix": "    return x"})
    assert code == 400 and data["error"]["param"] == "suffix" and "FIM" in data["error"]["message"]


def test_tools_need_a_template_with_a_tool_convention(live):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": tools}
    code, data = live.post("/v1/chat/completions", body)
    assert code == 400 and data["error"]["param"] == "tools"
    code, data = live.post("/v1/chat/completions", body | {"tool_choice": "none", "max_tokens": 2})
    assert code == 200


def test_pull_downloads_streams_progress_and_serves_the_file(live, tiny_files, tmp_path):
    folder = tiny_files["q4_k_m"].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{tiny_files['q4_k_m'].name}"
        code, raw, _ = live.request("POST", "/api/pull", json.dumps({"model": url}).encode())
    finally:
        httpd.shutdown()
    events = [json.loads(line) for line in raw.decode().splitlines()]
    assert code == 200 and events[0]["status"] == "pulling manifest"
    assert events[-1]["status"] == "success"
    progress = [e for e in events if "completed" in e]
    assert progress and progress[-1]["completed"] == tiny_files["q4_k_m"].stat().st_size
    assert "tiny-q4_k_m" in [m["name"] for m in live.get("/api/tags")[1]["models"]]
    code, data = live.post("/api/pull", {"model": "llama3.2"})
    assert code == 400 and "URL" in data["error"]


@pytest.mark.parametrize(
    "extra,param",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 7}}}},
            None,
        ),
        ({"grammar": "root ::= ("}, None),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"grammar": "root ::= 'a'", "response_format": {"type": "json_object"}}, None),
    ],
)
def test_bad_schemas_and_grammars_are_400s(live, extra, param):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}
    code, data = live.post("/v1/chat/completions", body)
    assert code == 400, data
    assert param is None or data["error"]["param"] == param
    code, _ = live.post("/v1/chat/completions", {**body, **{k: None for k in extra}})
    assert code == 200


def test_embedding_batches_are_bounded_and_cover_every_input():
    from warmload.server.embeddings import EMBED_BATCH_TOKENS, batches

    lengths = [5, 900, 3, 3000, 40, 40, 700, 1]
    inputs = [[1] * n for n in lengths]
    groups = batches(inputs)
    assert sorted(i for g in groups for i in g) == list(range(len(inputs)))
    for group in groups:
        width = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * width <= EMBED_BATCH_TOKENS
    assert [3] in groups  # the 3000-token input runs alone
