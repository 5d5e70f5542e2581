"""Request bodies parsed into dataclasses at the edge: every field type-checked, every error a
RequestError naming the parameter. OpenAI's fields plus llama.cpp's extensions (top_k, min_p,
repeat_penalty) and Ollama's (options, keep_alive).

Reference: the OpenAI API reference for /v1/completions and /v1/chat/completions; llama.cpp's
tools/server README; Ollama's docs/api.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from warmload.config import GenerationConfig
from warmload.errors import RequestError

_NUMBER = (int, float)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One parsed generation request, whatever endpoint it came from."""

    model: str | None
    prompt: str | list[int] | None  # completions
    messages: list[dict[str, Any]] | None  # chat
    options: dict[str, Any]  # GenerationConfig fields
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top alternatives per token (0: only the chosen token's)
    keep_alive: float | None = None  # seconds; Ollama's
    apply_template: bool = False  # wrap a plain prompt in the chat template (Ollama, not raw)
    system: str | None = None  # Ollama's system prompt


def parse_json(body: bytes, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise RequestError(f"request body is {len(body)} bytes; the limit is {max_bytes}", "body")
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", "body")
    return data


def _get(data: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = None):
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RequestError(f"{name} must be {_type_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise RequestError(f"{name} must be {_type_names(types)}, got {type(value).__name__}", name)
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(
        {
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "bool": "a boolean",
            "list": "an array",
            "dict": "an object",
        }.get(n, n)
        for n in names
    )


def _stop(data: dict[str, Any], max_stop: int) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or an array of them", "stop")
    if len(stop) > max_stop:
        raise RequestError(f"stop has {len(stop)} strings; at most {max_stop} allowed", "stop")
    return tuple(stop)


def sampling_options(data: dict[str, Any], max_stop: int, max_tokens_key: str) -> dict[str, Any]:
    """GenerationConfig fields from an OpenAI-style body (validated by GenerationConfig too)."""
    options: dict[str, Any] = {}
    max_tokens = _get(data, max_tokens_key, int)
    if max_tokens is None and max_tokens_key == "max_completion_tokens":
        max_tokens = _get(data, "max_tokens", int)
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = _get(data, name, _NUMBER)
        if value is not None:
            options[name] = float(value)
    for name in ("top_k", "seed", "repeat_last_n"):
        value = _get(data, name, int)
        if value is not None:
            options[name] = value
    options["stop"] = _stop(data, max_stop)
    n = _get(data, "n", int, 1)
    if n != 1:
        raise RequestError("only n=1 is supported", "n")
    GenerationConfig(**options)  # validates ranges, naming the parameter
    return options


def _logprobs(data: dict[str, Any], chat: bool) -> int | None:
    if chat:
        if not _get(data, "logprobs", bool, False):
            return None
        top = _get(data, "top_logprobs", int, 0)
    else:
        top = _get(data, "logprobs", int)
        if top is None:
            return None
    if not 0 <= top <= 20:
        raise RequestError("top_logprobs must be between 0 and 20", "top_logprobs")
    return top


def _stream_usage(data: dict[str, Any]) -> bool:
    opts = _get(data, "stream_options", dict, {})
    return bool(_get(opts, "include_usage", bool, False))


def parse_completion(data: dict[str, Any], max_stop: int) -> GenerateRequest:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    valid_ids = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    )
    if not (isinstance(prompt, str) or valid_ids):
        raise RequestError("prompt must be a string or an array of token ids", "prompt")
    return GenerateRequest(
        model=_get(data, "model", str),
        prompt=prompt,
        messages=None,
        options=sampling_options(data, max_stop, "max_tokens"),
        stream=_get(data, "stream", bool, False),
        include_usage=_stream_usage(data),
        logprobs=_logprobs(data, chat=False),
    )


def parse_chat(data: dict[str, Any], max_stop: int) -> GenerateRequest:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array", "messages")
    return GenerateRequest(
        model=_get(data, "model", str),
        prompt=None,
        messages=messages,
        options=sampling_options(data, max_stop, "max_completion_tokens"),
        stream=_get(data, "stream", bool, False),
        include_usage=_stream_usage(data),
        logprobs=_logprobs(data, chat=True),
    )


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a duration string like "5m", "1h", "-1"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError("keep_alive must be a number or a duration like '5m'", "keep_alive")
    if isinstance(value, _NUMBER):
        return float(value)
    if isinstance(value, str):
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        text = value.strip()
        for suffix in ("ms", "s", "m", "h"):
            if (
                text.endswith(suffix)
                and text[: -len(suffix)].lstrip("-").replace(".", "", 1).isdigit()
            ):
                return float(text[: -len(suffix)]) * units[suffix]
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return float(text)
    raise RequestError(
        f"keep_alive {value!r} is not a duration like '5m' or a number", "keep_alive"
    )


def parse_ollama(data: dict[str, Any], chat: bool, max_stop: int) -> GenerateRequest:
    """/api/generate and /api/chat: options carry the sampling fields (num_predict etc.)."""
    options_in = dict(_get(data, "options", dict, {}))
    if "num_predict" in options_in:
        options_in["max_tokens"] = options_in.pop("num_predict")
    if isinstance(options_in.get("max_tokens"), int) and options_in["max_tokens"] < 0:
        options_in["max_tokens"] = 1 << 30
    options = sampling_options(options_in, max_stop, "max_tokens")
    model = _get(data, "model", str)
    if chat:
        messages = _get(data, "messages", list, [])
        prompt = None
    else:
        messages = None
        prompt = _get(data, "prompt", str, "")
    return GenerateRequest(
        model=model,
        prompt=prompt,
        messages=messages,
        options=options,
        stream=_get(data, "stream", bool, True),
        keep_alive=parse_keep_alive(data.get("keep_alive")),
        apply_template=not chat and not _get(data, "raw", bool, False),
        system=_get(data, "system", str),
    )
