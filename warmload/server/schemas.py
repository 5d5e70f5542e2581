"""Request bodies parsed into dataclasses at the edge: every field type- and range-checked,
every error a RequestError naming the parameter. OpenAI's fields plus llama.cpp's extensions
(top_k, min_p, repeat_penalty, grammar, json_schema); Ollama's are in ollama_schema.py.

Choices made where the APIs leave room (README.md, "Serving", says the same):
- max_tokens=0 generates nothing (finish_reason "length"); with echo and logprobs it scores
  the prompt, as OpenAI's legacy completions did.
- seed: any integer in -2**63..2**64-1; temperature: finite, 0..100 (0: greedy).
- roles: system, developer (rendered as system), user, assistant, tool.

Reference: the OpenAI API reference for /v1/completions and /v1/chat/completions; llama.cpp's
tools/server README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warmload.config import GenerationConfig
from warmload.errors import RequestError
from warmload.server.fields import (
    MAX_TOKENS_LIMIT,
    get,
    get_int,
    get_number,
    get_seed,
    string_list,
)
from warmload.server.structured import Constraint, parse_openai_constraint
from warmload.server.tools import parse_tool_choice, parse_tools

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16  # choices per prompt
MAX_CHOICES = 64  # prompts x n in one request
MAX_LOGIT_BIAS = 1024  # entries


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One parsed generation request, whatever endpoint it came from."""

    model: str | None
    prompts: list[str | list[int]] | None  # completions: one or more prompts
    messages: list[dict[str, Any]] | None  # chat
    options: dict[str, Any]  # GenerationConfig fields
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top alternatives per token (0: only the chosen token's)
    keep_alive: float | None = None  # seconds; Ollama's
    apply_template: bool = False  # wrap a plain prompt in the chat template (Ollama, not raw)
    system: str | None = None  # Ollama's system prompt
    n: int = 1  # choices per prompt, each an independent row of the batch
    echo: bool = False  # completions: the prompt before the completion (with its logprobs)
    suffix: str | None = None  # completions: fill in the middle between prompt and suffix
    logit_bias: dict[int, float] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"  # none | auto | required | {"name": ...}
    constraint: Constraint | None = None  # structured output

    @property
    def prompt(self) -> str | list[int] | None:
        return self.prompts[0] if self.prompts else None


def sampling_options(
    data: dict[str, Any], max_stop: int, max_tokens_key: str = "max_tokens"
) -> dict[str, Any]:
    """GenerationConfig fields from an OpenAI-style body (validated by GenerationConfig too)."""
    options: dict[str, Any] = {}
    max_tokens = get_int(data, max_tokens_key, 0, MAX_TOKENS_LIMIT)
    if max_tokens is None and max_tokens_key == "max_completion_tokens":
        max_tokens = get_int(data, "max_tokens", 0, MAX_TOKENS_LIMIT)
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    ranges = {
        "temperature": (0.0, 100.0),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "repeat_penalty": (0.0, 100.0),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
    }
    for name, (lo, hi) in ranges.items():
        value = get_number(data, name, lo, hi)
        if value is not None:
            options[name] = value
    for name, lo, hi in (("top_k", 0, 1 << 31), ("repeat_last_n", -1, 1 << 31)):
        value = get_int(data, name, lo, hi)
        if value is not None:
            options[name] = value
    seed = get_seed(data)
    if seed is not None:
        options["seed"] = seed
    options["stop"] = tuple(string_list(data, "stop", max_stop))
    GenerationConfig(**options)  # validates the rest, naming the parameter
    return options


def parse_logit_bias(data: dict[str, Any], vocab_size: int | None = None) -> dict[int, float]:
    """OpenAI's logit_bias: {"token id": bias in [-100, 100]} (-100 bans, 100 forces)."""
    raw = get(data, "logit_bias", dict, {})
    if len(raw) > MAX_LOGIT_BIAS:
        raise RequestError(f"logit_bias has {len(raw)} entries; at most {MAX_LOGIT_BIAS}")
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise RequestError(f"logit_bias token {token} is outside the vocabulary", "logit_bias")
        number = get_number({"logit_bias": value}, "logit_bias", -100.0, 100.0)
        bias[token] = float(number)
    return bias


def _logprobs(data: dict[str, Any], chat: bool) -> int | None:
    if chat:
        if not get(data, "logprobs", bool, False):
            if get(data, "top_logprobs", int) is not None:
                raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
            return None
        return get_int(data, "top_logprobs", 0, 20, 0)
    return get_int(data, "logprobs", 0, 20)


def _stream_usage(data: dict[str, Any]) -> bool:
    opts = get(data, "stream_options", dict, {})
    return bool(get(opts, "include_usage", bool, False))


def _prompts(data: dict[str, Any]) -> list[str | list[int]]:
    """A string, an array of token ids, or an array of either (several prompts)."""
    prompt = data.get("prompt")

    def is_ids(value: Any) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        )

    if isinstance(prompt, str) or is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise RequestError(
        "prompt must be a string, an array of token ids, or a non-empty array of those", "prompt"
    )


def _n(data: dict[str, Any], prompts: int) -> int:
    n = get_int(data, "n", 1, MAX_N, 1)
    if n * prompts > MAX_CHOICES:
        raise RequestError(
            f"{prompts} prompts x n={n} is {n * prompts} choices; at most {MAX_CHOICES}", "n"
        )
    return n


def parse_completion(data: dict[str, Any], max_stop: int) -> GenerateRequest:
    prompts = _prompts(data)
    suffix = get(data, "suffix", str)
    echo = get(data, "echo", bool, False)
    if suffix is not None and echo:
        raise RequestError("echo and suffix cannot be used together", "suffix")
    return GenerateRequest(
        model=get(data, "model", str),
        prompts=prompts,
        messages=None,
        options=sampling_options(data, max_stop, "max_tokens"),
        stream=get(data, "stream", bool, False),
        include_usage=_stream_usage(data),
        logprobs=_logprobs(data, chat=False),
        n=_n(data, len(prompts)),
        echo=echo,
        suffix=suffix or None,
        logit_bias=parse_logit_bias(data),
        constraint=parse_openai_constraint(data),
    )


def check_messages(messages: Any, name: str = "messages") -> list[dict[str, Any]]:
    """Messages with a known role; `developer` becomes `system` (templates know that one)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{name} must be a non-empty array", name)
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"{name}[{i}] must be an object with role and content", name)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"{name}[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", name
            )
        if message.get("images"):
            raise RequestError(
                f"{name}[{i}] has images; warmload serves text-only models", "images"
            )
        message = dict(message, role="system" if role == "developer" else role)
        checked.append(message)
    return checked


def parse_chat(data: dict[str, Any], max_stop: int) -> GenerateRequest:
    messages = check_messages(data.get("messages"))
    tools = parse_tools(data.get("tools"))
    return GenerateRequest(
        model=get(data, "model", str),
        prompts=None,
        messages=messages,
        options=sampling_options(data, max_stop, "max_completion_tokens"),
        stream=get(data, "stream", bool, False),
        include_usage=_stream_usage(data),
        logprobs=_logprobs(data, chat=True),
        n=_n(data, 1),
        logit_bias=parse_logit_bias(data),
        tools=tools,
        tool_choice=parse_tool_choice(data.get("tool_choice"), tools),
        constraint=parse_openai_constraint(data),
    )
