"""Tool calling and fill-in-the-middle: the tools reach the model's own template (Qwen2.5's,
read from the real GGUF), calls are parsed from Hermes and Llama 3 outputs, a forced call is
constrained to valid JSON for the function's schema, and the whole path runs live on SmolLM2
with a Hermes-style template (ChatML tokens, as Qwen's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llguidance")

from warmload.chat import ChatTemplate  # noqa: E402
from warmload.errors import RequestError  # noqa: E402
from warmload.server.prompts import fim_prompt, fim_tokens  # noqa: E402
from warmload.server.tools import (  # noqa: E402
    ToolStream,
    forced_call_grammar,
    messages_for_template,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
    tool_format,
)

QWEN = Path("/work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
NO_ARGS = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def qwen_tokenizer():
    if not QWEN.exists():
        pytest.skip(f"{QWEN} not found")
    from warmload.tokenizer import load_tokenizer

    return load_tokenizer(QWEN)


def test_tools_and_tool_choice_are_checked():
    assert parse_tools(None) is None
    tools = parse_tools([WEATHER, TIME])
    assert [t["function"]["name"] for t in tools] == ["get_weather", "get_time"]
    for bad in ([{"type": "function"}], [{"function": {"name": ""}}], [WEATHER, WEATHER], "x"):
        with pytest.raises(RequestError):
            parse_tools(bad)
    assert parse_tool_choice(None, tools) == "auto"
    assert parse_tool_choice("required", tools) == "required"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert parse_tool_choice(named, tools) == {"name": "get_time"}
    with pytest.raises(RequestError):
        parse_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(RequestError):
        parse_tool_choice("required", None)


def test_templates_tool_conventions(qwen_tokenizer, smollm2_path, gemma3_path):
    from warmload.tokenizer import load_tokenizer

    assert tool_format(qwen_tokenizer.chat_template) == "hermes"
    assert tool_format(load_tokenizer(smollm2_path).chat_template) is None
    assert tool_format(ChatTemplate.for_tokenizer(load_tokenizer(gemma3_path)).source) is None
    llama31 = "{%- if tools %}{{- 'parameters' }}{% endif %}<|python_tag|>"
    assert tool_format(llama31) == "json"


def test_qwen_template_renders_tools_and_past_calls(qwen_tokenizer):
    template = ChatTemplate.for_tokenizer(qwen_tokenizer)
    messages = messages_for_template(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]
    )
    text = template.render(messages, add_generation_prompt=True, tools=[WEATHER])
    assert "# Tools" in text and '"name": "get_weather"' in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<tool_response>\n18 C\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "# Tools" not in template.render(messages, add_generation_prompt=True)


def test_calls_parsed_from_hermes_and_llama_outputs():
    names = {"get_weather", "get_time"}
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
    text += '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    rest, calls = parse_tool_calls(text, "hermes", names)
    assert rest == "Let me check." and [c.name for c in calls] == ["get_weather", "get_time"]
    assert calls[0].arguments == {"city": "Oslo"}
    assert json.loads(calls[0].as_openai()["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[1].as_ollama() == {"function": {"name": "get_time", "arguments": {}}}
    for not_a_call in ("<tool_call>\n{bad json}\n</tool_call>", '<tool_call>{"name": "x"}'):
        assert parse_tool_calls(not_a_call, "hermes", names) == (not_a_call, [])
    llama = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}'
    rest, calls = parse_tool_calls(llama, "json", names)
    assert rest == "" and calls[0].arguments == {"city": "Rome"}
    assert parse_tool_calls("The answer is {x}", "json", names)[1] == []


def test_tool_stream_holds_back_calls_only():
    stream = ToolStream("hermes", {"get_time"})
    text = 'Sure<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    streamed = "".join(stream.feed(ch) for ch in text)
    assert streamed == "Sure"
    assert [c.name for c in stream.finish()[1]] == ["get_time"]
    stream = ToolStream("hermes", {"get_time"})
    assert "".join(stream.feed(ch) for ch in "a <tool b") + stream.finish()[0] == "a <tool b"


def test_forced_call_grammar_admits_only_valid_calls(smollm2_path):
    import llguidance

    from warmload.server.structured import ll_tokenizer
    from warmload.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    grammar = llguidance.LLMatcher.grammar_from_lark(forced_call_grammar("hermes", [WEATHER, TIME]))

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
        ids = tokenizer.encode(text, add_special=False)
        return matcher.consume_tokens(ids) and matcher.is_accepting()

    good = (
        '<tool_call>\n{"name":"get_weather","arguments":{"city":"Oslo","unit":"c"}}\n</tool_call>'
    )
    assert accepts(good)
    assert not accepts(good.replace('"c"', '"k"'))  # not in the enum
    assert not accepts(good.replace("get_weather", "get_wether"))
    only = llguidance.LLMatcher.grammar_from_lark(
        forced_call_grammar("json", [WEATHER, TIME], "get_time")
    )
    matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), only, log_level=0)
    ids = tokenizer.encode('{"name":"get_time","parameters":{}}', add_special=False)
    assert matcher.consume_tokens(ids) and matcher.is_accepting()


def test_fim_prompt_with_qwen_coder_tokens(qwen_tokenizer):
    pre, suf, mid = fim_tokens(qwen_tokenizer)
    ids = fim_prompt(qwen_tokenizer, "def add(a, b):\n", "\n    return c\n")
    assert ids[0] == pre and ids[-1] == mid and suf in ids
    text = qwen_tokenizer.decode(ids, skip_special=False)
    assert text == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>"


# -- live: SmolLM2 with a Hermes template (ChatML tokens, as Qwen2.5's) ---------------------
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call functions. <tools>"
    "{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}</tools>\nReturn "
    "<tool_call>{json}</tool_call>.<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="module")
def hermes_live(smollm2_path):
    pytest.importorskip("uvicorn")
    from live_server import LiveServer, free_port

    from warmload.config import LoadConfig, ServerConfig

    config = ServerConfig(
        models=(("smollm2", str(smollm2_path)),),
        port=free_port(),
        load=LoadConfig(ctx=1024, threads=2),
    )
    with LiveServer(config) as live:
        engine = live.state.cache.entries["smollm2"].engine
        engine.template = ChatTemplate(HERMES_TEMPLATE, origin="test hermes template")
        yield live


def test_forced_tool_call_with_the_openai_client(hermes_live):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=hermes_live.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    out = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=80,
        temperature=0,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time") and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
    named = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice=named,
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    deltas, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and deltas[0].function.name == "get_weather"
    assert set(json.loads(deltas[0].function.arguments)) == {"city", "unit"}


def test_ollama_chat_returns_tool_calls(hermes_live):
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER],
        "stream": False,
        "tool_choice": "required",  # warmload's extension (Ollama has no tool_choice)
        "options": {"temperature": 0, "num_predict": 80},
    }
    code, data = hermes_live.post("/api/chat", body)
    assert code == 200, data
    call = data["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and set(call["arguments"]) == {"city", "unit"}


def test_ollama_streamed_chat_carries_tool_calls(hermes_live):
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What time is it?"}],
        "tools": [WEATHER, NO_ARGS],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "options": {"temperature": 0, "num_predict": 60},
    }
    code, raw, _ = hermes_live.request("POST", "/api/chat", json.dumps(body).encode())
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert code == 200 and lines[-1]["done"] is True
    calls = [c for line in lines for c in line.get("message", {}).get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert "<tool_call>" not in "".join(line["message"]["content"] for line in lines)


LLAMA_JSON_TEMPLATE = (  # the Llama 3.x convention: tools in the prompt, a bare JSON call back
    "{%- if tools %}<|im_start|>system\nCall a function by answering with "
    '{"name": function name, "parameters": dictionary of arguments}. '
    "{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_llama_json_convention_and_auto_mode_text(hermes_live):
    engine = hermes_live.state.cache.entries["smollm2"].engine
    hermes = engine.template
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": [WEATHER],
        "max_tokens": 60,
        "temperature": 0,
    }
    try:
        engine.template = ChatTemplate(LLAMA_JSON_TEMPLATE, origin="test llama template")
        named = {"type": "function", "function": {"name": "get_weather"}}
        code, data = hermes_live.post("/v1/chat/completions", body | {"tool_choice": named})
        assert code == 200, data
        call = data["choices"][0]["message"]["tool_calls"][0]["function"]
        assert call["name"] == "get_weather"
        assert set(json.loads(call["arguments"])) == {"city", "unit"}
    finally:
        engine.template = hermes
    # auto: whatever the model writes, streamed and whole answers agree
    body["messages"] = [{"role": "user", "content": "Say hi."}]
    code, whole = hermes_live.post("/v1/chat/completions", body)
    code, raw, _ = hermes_live.request(
        "POST", "/v1/chat/completions", json.dumps(body | {"stream": True}).encode()
    )
    content, calls, finish = "", [], None
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                content += choice["delta"].get("content") or ""
                calls += choice["delta"].get("tool_calls") or []
                finish = choice["finish_reason"] or finish
    message = whole["choices"][0]["message"]
    assert content == (message["content"] or "")
    assert len(calls) == len(message.get("tool_calls") or [])
    assert finish == whole["choices"][0]["finish_reason"]
