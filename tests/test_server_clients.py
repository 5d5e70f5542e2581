"""The official `openai` and `ollama` Python packages against a live server on loopback: what
apps call on connect and in use, answers equal to the engine's, typed objects parsed without
errors (structured output through openai's parse helper, Ollama's list/show/ps/embed)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from live_server import LiveServer, free_port  # noqa: E402

from warmload.config import LoadConfig, ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def live(smollm2_path):
    config = ServerConfig(
        models=(("smollm2", str(smollm2_path)),),
        port=free_port(),
        load=LoadConfig(ctx=512, threads=2),
        aliases=(("gpt-4o-mini", "smollm2"),),
    )
    with LiveServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def oai(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def oll(live):
    return ollama.Client(host=live.url)


def engine(live):
    return live.state.cache.entries["smollm2"].engine


def test_openai_chat_stream_n_and_embeddings(live, oai):
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = oai.chat.completions.create(
        model="gpt-4o-mini", messages=messages, max_tokens=10, temperature=0, n=2
    )
    assert whole.model == "smollm2" and len(whole.choices) == 2
    assert whole.choices[0].message.content == whole.choices[1].message.content
    expected = engine(live).chat(messages, max_tokens=10, temperature=0).text
    assert whole.choices[0].message.content == expected
    pieces = [
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=10, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == expected
    emb = oai.embeddings.create(model="smollm2", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576
    assert [m.id for m in oai.models.list()] == ["smollm2", "gpt-4o-mini"]


def test_openai_structured_output_parse_helper(oai):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        population: int

    out = oai.beta.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Give a city and its population."}],
        response_format=City,
        max_tokens=60,
        temperature=0,
    )
    parsed = out.choices[0].message.parsed
    assert isinstance(parsed, City)


def test_openai_bad_requests_raise_bad_request_errors(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "x"}], seed=2**64
        )
    assert "seed" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_ollama_client_list_show_chat_generate_embed(live, oll, smollm2_path):
    listed = oll.list()
    assert listed.models[0].model == "smollm2"
    assert listed.models[0].size == smollm2_path.stat().st_size
    assert listed.models[0].details.format == "gguf"
    shown = oll.show("smollm2")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "<|im_start|>" in shown.template
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = oll.chat(
        model="smollm2", messages=messages, options={"temperature": 0, "num_predict": 10}
    )
    assert reply.message.content == engine(live).chat(messages, max_tokens=10, temperature=0).text
    assert reply.done and reply.eval_count >= 1
    parts = [
        p.response
        for p in oll.generate(
            model="smollm2", prompt="Count: 1, 2,", stream=True, options={"num_predict": 8}
        )
    ]
    assert "".join(parts)
    vectors = oll.embed(model="smollm2", input=["one", "two"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == 576
    assert [m.model for m in oll.ps().models] == ["smollm2"]


def test_ollama_client_format_and_errors(oll):
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    reply = oll.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "Pick a colour."}],
        format=schema,
        options={"seed": 1, "num_predict": 40},
    )
    assert set(json.loads(reply.message.content)) == {"colour"}
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(
            model="smollm2", messages=[{"role": "user", "content": "x"}], options={"seed": 2**64}
        )
    assert err.value.status_code == 400 and "seed" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        oll.show("missing-model")
    assert err.value.status_code == 404
