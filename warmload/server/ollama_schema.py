"""Ollama request bodies (/api/generate, /api/chat, /api/embed, /api/show, /api/pull) parsed and
range-checked into the same GenerateRequest the OpenAI routes use.

Ollama's `options` carry the sampling fields (num_predict for max_tokens). Options Ollama knows
but warmload has no use for (num_ctx, num_gpu, mirostat, ...) are logged and ignored, as Ollama
itself logs unknown options; fields that would change the answer and are not supported
(images, template, context, think) are refused with a 400.

Reference: Ollama's docs/api.md and api/types.go (Options, Runner).
"""

from __future__ import annotations

import logging
from typing import Any

from warmload.errors import RequestError
from warmload.server.fields import MAX_TOKENS_LIMIT, NUMBER, get, get_int
from warmload.server.schemas import (
    GenerateRequest,
    check_messages,
    sampling_options,
)
from warmload.server.structured import parse_ollama_format
from warmload.server.tools import parse_tool_choice, parse_tools

log = logging.getLogger("warmload.server")

SAMPLING = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
)
# Ollama options that tune the runner, not the answer: ignored (logged once per request).
RUNNER_OPTIONS = frozenset(
    "num_ctx num_keep num_batch num_gpu main_gpu use_mmap use_mlock num_thread numa low_vram "
    "vocab_only typical_p tfs_z mirostat mirostat_tau mirostat_eta penalize_newline".split()
)


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a duration string like "5m", "1h", "-1"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError("keep_alive must be a number or a duration like '5m'", "keep_alive")
    if isinstance(value, NUMBER):
        return float(get({"keep_alive": value}, "keep_alive", NUMBER))
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


def ollama_options(data: dict[str, Any], max_stop: int) -> dict[str, Any]:
    """GenerationConfig fields from Ollama's `options` (num_predict -1/-2: no limit)."""
    options_in = get(data, "options", dict, {})
    ignored = sorted(k for k in options_in if k in RUNNER_OPTIONS)
    unknown = sorted(k for k in options_in if k not in RUNNER_OPTIONS and k not in SAMPLING)
    unknown = [k for k in unknown if k != "num_predict"]
    if ignored or unknown:
        log.warning("ignoring Ollama options %s", ", ".join(ignored + unknown))
    picked = {k: options_in[k] for k in SAMPLING if k in options_in}
    predict = get_int(options_in, "num_predict", -2, MAX_TOKENS_LIMIT)
    if predict is not None:
        picked["max_tokens"] = MAX_TOKENS_LIMIT if predict < 0 else predict
    return sampling_options(picked, max_stop, "max_tokens")


def _refuse_unsupported(data: dict[str, Any]) -> None:
    if data.get("images"):
        raise RequestError("images are not supported: warmload serves text-only models", "images")
    if data.get("template"):
        raise RequestError(
            "a custom template is not supported; the model's own chat template is used "
            "(send raw: true with a prompt you formatted yourself)",
            "template",
        )
    if data.get("context"):
        raise RequestError(
            "context (the deprecated token context) is not supported; send the conversation "
            "to /api/chat instead",
            "context",
        )
    if data.get("think"):
        raise RequestError("think is not supported: no thinking models are served", "think")


def parse_ollama(data: dict[str, Any], chat: bool, max_stop: int) -> GenerateRequest:
    """/api/generate and /api/chat."""
    _refuse_unsupported(data)
    options = ollama_options(data, max_stop)
    messages: list[dict[str, Any]] | None = None
    prompts: list[str | list[int]] | None = None
    tools = None
    suffix = None
    if chat:
        raw_messages = get(data, "messages", list, [])
        messages = check_messages(raw_messages) if raw_messages else []
        tools = parse_tools(data.get("tools"))
    else:
        prompts = [get(data, "prompt", str, "")]
        suffix = get(data, "suffix", str) or None
    raw = get(data, "raw", bool, False)
    return GenerateRequest(
        model=get(data, "model", str),
        prompts=prompts,
        messages=messages,
        options=options,
        stream=get(data, "stream", bool, True),
        keep_alive=parse_keep_alive(data.get("keep_alive")),
        apply_template=not chat and not raw and suffix is None,
        system=get(data, "system", str),
        suffix=suffix,
        tools=tools,
        # OpenAI's tool_choice, accepted here too (an extension: Ollama has none)
        tool_choice=parse_tool_choice(data.get("tool_choice"), tools),
        constraint=parse_ollama_format(data.get("format")),
    )
