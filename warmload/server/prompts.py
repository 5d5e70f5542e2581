"""A request's prompt token ids: the chat template (with tools), a plain prompt, a prompt
wrapped in the template (Ollama), or fill-in-the-middle around a suffix; and the constraint
its output must follow (response format, or a forced tool call).

Fill-in-the-middle follows the coder models' own tokens, as llama.cpp's format_infill:
`<|fim_prefix|>` prefix `<|fim_suffix|>` suffix `<|fim_middle|>` (Qwen2.5-Coder, PSM order),
or StarCoder's `<fim_prefix>` spelling. A model without them gets a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warmload.errors import RequestError
from warmload.server.schemas import GenerateRequest
from warmload.server.structured import Constraint
from warmload.server.tools import forced_call_grammar, messages_for_template, tool_format

FIM_SPELLINGS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
)


@dataclass(slots=True)
class BuiltPrompts:
    ids: list[list[int]]
    texts: list[str]  # each prompt as text (echo repeats it)
    tool_format: str | None = None  # set when the model's tool calls are to be parsed
    constraint: Constraint | None = None


def fim_tokens(tokenizer: Any) -> tuple[int, int, int] | None:
    """The (prefix, suffix, middle) token ids of a fill-in-the-middle vocabulary, or None."""
    for spelling in FIM_SPELLINGS:
        ids = [tokenizer.token_to_id(text) for text in spelling]
        if all(i is not None for i in ids):
            return ids[0], ids[1], ids[2]
    return None


def fim_prompt(tokenizer: Any, prefix: str, suffix: str) -> list[int]:
    """Prefix-suffix-middle prompt ids; the model writes the middle."""
    tokens = fim_tokens(tokenizer)
    if tokens is None:
        raise RequestError(
            "suffix (fill-in-the-middle) needs a model with FIM tokens (<|fim_prefix|>, "
            "<|fim_suffix|>, <|fim_middle|>), such as Qwen2.5-Coder; this one has none",
            "suffix",
        )
    pre, suf, mid = tokens
    ids = [pre, *tokenizer.encode(prefix, add_special=False), suf]
    ids += [*tokenizer.encode(suffix, add_special=False), mid]
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.insert(0, tokenizer.bos_id)
    return ids


def _chat(engine: Any, req: GenerateRequest) -> BuiltPrompts:
    messages = messages_for_template(list(req.messages or []))
    if req.system and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": req.system})
    tools = req.tools if req.tool_choice != "none" else None
    fmt = None
    constraint = req.constraint
    if tools:
        fmt = tool_format(engine.template.source)
        if fmt is None:
            raise RequestError(
                f"this model's chat template ({engine.template.origin}) has no tool-calling "
                "convention; use a model whose template takes tools (Qwen2.5, Llama 3.1+)",
                "tools",
            )
        if req.tool_choice != "auto":
            if constraint is not None:
                raise RequestError(
                    "a forced tool call (tool_choice) and response_format cannot be combined",
                    "tool_choice",
                )
            only = req.tool_choice["name"] if isinstance(req.tool_choice, dict) else None
            constraint = Constraint("grammar", forced_call_grammar(fmt, tools, only))
    ids = engine.chat_prompt(messages, tools=tools)
    return BuiltPrompts([ids], [""], fmt, constraint)


def build_prompts(engine: Any, req: GenerateRequest) -> BuiltPrompts:
    """Every prompt of the request as token ids (checked against the vocabulary)."""
    if req.messages is not None:
        return _chat(engine, req)
    ids, texts = [], []
    for prompt in req.prompts or [""]:
        if req.suffix is not None:
            if not isinstance(prompt, str):
                raise RequestError("suffix needs a text prompt", "suffix")
            ids.append(fim_prompt(engine.tokenizer, prompt, req.suffix))
        elif req.apply_template and isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
            if req.system:
                messages.insert(0, {"role": "system", "content": req.system})
            ids.append(engine.chat_prompt(messages))
        else:
            ids.append(engine.encode_prompt(prompt))
        texts.append(prompt if isinstance(prompt, str) else engine.tokenizer.decode(prompt))
    return BuiltPrompts(ids, texts, None, req.constraint)
