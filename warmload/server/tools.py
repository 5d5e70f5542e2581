"""Tool calling: tools checked at the edge, rendered through the model's own chat template (its
`tools` variable), and the model's calls parsed out of its text.

Conventions parsed (the format is read off the template's source):
- "hermes": Qwen2.5 / Hermes / SmolLM3: `<tool_call>\n{"name": ..., "arguments": {...}}\n
  </tool_call>`, possibly several, possibly after some text.
- "json": Llama 3.x: the whole answer is `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`), or several separated by ';'.
A template that ignores `tools` (SmolLM2, Gemma 3) has no convention: tools get a 400.
tool_choice "required" or a named function forces the call by constrained decoding (a Lark
grammar embedding each function's parameters schema, compiled by llguidance).

Reference: the OpenAI API reference (tools, tool_choice, message.tool_calls, streamed
delta.tool_calls); Qwen2.5's tokenizer_config.json chat template; Llama 3.1's model card
(JSON tool calling); llama.cpp common/chat.cpp (the same formats).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from warmload.errors import RequestError

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MAX_TOOLS = 128


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    """OpenAI tools ([{"type": "function", "function": {name, description, parameters}}])."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise RequestError(f"tools must be an array of at most {MAX_TOOLS} tools", "tools")
    tools = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not fn:
            raise RequestError(f"tools[{i}] must be {{type: function, function: {{...}}}}", "tools")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise RequestError(f"tools[{i}].function.name must be a non-empty string", "tools")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema", "tools")
        tools.append({"type": "function", "function": {**fn, "parameters": params}})
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise RequestError("tools have duplicate function names", "tools")
    return tools


def parse_tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any]:
    """ "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}."""
    if value is None:
        return "auto"
    if value in ("none", "auto", "required"):
        if value == "required" and not tools:
            raise RequestError("tool_choice 'required' needs tools", "tool_choice")
        return value
    name = value.get("function", {}).get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise RequestError(
            "tool_choice must be none, auto, required or {type: function, function: {name}}",
            "tool_choice",
        )
    if name not in [t["function"]["name"] for t in tools or []]:
        raise RequestError(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
    return {"name": name}


def tool_format(template_source: str) -> str | None:
    """The template's tool convention: "hermes", "json", or None (it ignores tools)."""
    if "tools" not in template_source:
        return None
    if HERMES_OPEN in template_source:
        return "hermes"
    if "parameters" in template_source or PYTHON_TAG in template_source:
        return "json"
    return None


def messages_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool_calls with `arguments` as objects (templates write them with tojson),
    and content None as "" (OpenAI sends null beside tool_calls)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                fn = dict(call.get("function", call)) if isinstance(call, dict) else {}
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args or "{}")
                    except json.JSONDecodeError:
                        raise RequestError(
                            "a tool call's arguments are not valid JSON", "messages"
                        ) from None
                fixed.append({**call, "function": fn} if isinstance(call, dict) else call)
            message = {**message, "tool_calls": fixed}
        out.append(message)
    return out


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }
        return body if index is None else {"index": index, **body}

    def as_ollama(self) -> dict[str, Any]:
        return {"function": {"name": self.name, "arguments": self.arguments}}


def _call_from(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], args) if isinstance(args, dict) else None


def parse_tool_calls(text: str, fmt: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """(the text outside the calls, the calls) of a finished answer. Text that only looks
    like a call (bad JSON, unknown function) stays text."""
    if fmt == "hermes":
        calls, rest, pos = [], [], 0
        while (start := text.find(HERMES_OPEN, pos)) >= 0:
            end = text.find(HERMES_CLOSE, start)
            body = text[start + len(HERMES_OPEN) : end if end >= 0 else len(text)]
            try:
                call = _call_from(json.loads(body), names)
            except json.JSONDecodeError:
                call = None
            if call is None:
                break
            rest.append(text[pos:start])
            calls.append(call)
            pos = len(text) if end < 0 else end + len(HERMES_CLOSE)
        rest.append(text[pos:])
        return "".join(rest).strip() if calls else text, calls
    stripped = text.strip().removeprefix(PYTHON_TAG).strip()
    calls = []
    for part in stripped.split(";") if stripped.startswith("{") else []:
        try:
            call = _call_from(json.loads(part), names)
        except json.JSONDecodeError:
            return text, []
        if call is None:
            return text, []
        calls.append(call)
    return ("", calls) if calls else (text, [])


class ToolStream:
    """Streams content while holding back anything that may be a tool call; the calls come
    out parsed at the end (OpenAI streams them as delta.tool_calls)."""

    def __init__(self, fmt: str, names: set[str]) -> None:
        self.fmt, self.names = fmt, names
        self.text = ""  # everything so far
        self.sent = 0  # characters of text already streamed as content
        self.in_call = False  # hermes: a <tool_call> began

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.fmt == "json":
            head = self.text.lstrip()
            if not head or head.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(head):
                return ""
            out, self.sent = self.text[self.sent :], len(self.text)
            return out
        if self.in_call:
            return ""
        marker = self.text.find(HERMES_OPEN, self.sent)
        if marker >= 0:  # from here on everything is held for the parser
            out, self.sent, self.in_call = self.text[self.sent : marker], marker, True
            return out.rstrip("\n")
        hold = 0
        for n in range(min(len(HERMES_OPEN) - 1, len(self.text) - self.sent), 0, -1):
            if self.text.endswith(HERMES_OPEN[:n]):
                hold = n
                break
        out_to = len(self.text) - hold
        out, self.sent = self.text[self.sent : out_to], max(self.sent, out_to)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not streamed yet, the calls)."""
        rest, calls = parse_tool_calls(self.text, self.fmt, self.names)
        if calls:
            return "", calls
        return self.text[min(self.sent, len(self.text)) :], []


def forced_call_grammar(fmt: str, tools: list[dict[str, Any]], only: str | None = None) -> str:
    """A Lark grammar (llguidance) that admits exactly one call of a tool (or of `only`)."""
    key = "arguments" if fmt == "hermes" else "parameters"
    options = []
    for tool in tools:
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, key: fn["parameters"]},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    schema = json.dumps({"anyOf": options} if len(options) > 1 else options[0])
    call = f"%json {schema}"
    if fmt == "hermes":
        return f'start: "{HERMES_OPEN}\\n" call "\\n{HERMES_CLOSE}"\ncall: {call}\n'
    return f"start: call\ncall: {call}\n"
