"""Chat templates: a model's Jinja template (`tokenizer.chat_template`), rendered as HF does.

Follows transformers' `render_jinja_template` (utils/chat_template_utils.py): jinja2's
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension,
`{% generation %}` blocks rendered as plain text, `raise_exception`, `strftime_now`, and a
`tojson` filter that does not escape HTML (json.dumps, ensure_ascii=False); the variables are
messages, add_generation_prompt, tools, documents, bos_token, eos_token and any extra keyword.

BOS: many templates write the BOS token's text themselves (Gemma's `{{ bos_token }}`) while the
tokenizer also adds BOS. As llama.cpp's common_chat_templates_apply, `render_prompt` strips a
leading BOS text (and a trailing EOS text) when the tokenizer adds that token itself, so the
engine always encodes its result with `encode(text, add_special=True, parse_special=True)`.
`render` returns exactly what Hugging Face's apply_chat_template(tokenize=False) gives.
Templates come from model files, so rendering is bounded (RENDER_SECONDS, MAX_OUTPUT_CHARS, and
no huge powers or repetitions); past a bound it is a TokenizerError, not a hang.

Without a template in the file: the architecture's built-in one, named by the registry
(models/registry.py): Gemma's for Gemma architectures (its tokens are in every Gemma vocab),
Mistral's [INST], Phi-3's, Cohere's turns, else ChatML (llama.cpp's default).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from warmload.errors import RequestError, TokenizerError

# google/gemma-3-*-it tokenizer_config.json "chat_template" (the Gemma 3 prompt format).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# llama.cpp's CHATML_TEMPLATE_SRC (common/chat.cpp): the default for files without a template.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

# mistralai/Mistral-7B-Instruct-v0.1's template (a system message joins the first user turn)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '[INST] ' + (prefix if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- else -%}{{ message['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)
# microsoft/Phi-3-mini-4k-instruct's template
PHI3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}"
    "{%- else -%}{{ eos_token }}{%- endif -%}"
)
# CohereForAI's turn format (Command R / R7B, tiny-aya)
COHERE_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = {'system': 'SYSTEM', 'user': 'USER'}.get(message['role'], 'CHATBOT') -%}"
    "{{ '<|START_OF_TURN_TOKEN|><|' + role + '_TOKEN|>' + message['content'] }}"
    "{{ '<|END_OF_TURN_TOKEN|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
    "{%- endif -%}"
)
# the registry's built-in template names (models/registry.py Architecture.chat_template)
BUILTIN_TEMPLATES = {
    "gemma3": GEMMA3_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "phi3": PHI3_TEMPLATE,
    "cohere": COHERE_TEMPLATE,
}


def builtin_template(arch: object) -> tuple[str, str]:
    """(name, source) of the built-in template for architecture `arch` (the registry says
    which; ChatML for an architecture it does not know, as llama.cpp)."""
    # the registry is data (torch-free), read at call time: chat sits beside models
    from warmload.models.registry import builtin_template as registered

    name = registered(arch) or ("gemma3" if str(arch).startswith("gemma") else "chatml")
    return name, BUILTIN_TEMPLATES[name]


class _TemplateRaised(Exception):
    """raise_exception() called by a template: the template rejects the conversation."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlocks(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


# Limits on what a template (a string from a model file) may cost: rendering time, output size,
# big-number powers and repetitions (`10 ** 10 ** 9`, `"x" * 10 ** 9`). jinja2's sandbox already
# caps range() at 100000 items; nested ranges are what the time limit stops.
RENDER_SECONDS = 0.5  # real templates render in milliseconds
MAX_OUTPUT_CHARS = 1 << 22
_MAX_RESULT_BITS = 1 << 16
_MAX_REPEAT = 1 << 20
_budget = threading.local()


class _TemplateTooCostly(Exception):
    """The template went past one of the limits above."""


def _tick() -> None:
    deadline = getattr(_budget, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _TemplateTooCostly(f"rendering took more than {RENDER_SECONDS} s")


class _TimedRange(Sequence):
    """range() that checks the render's deadline as it is iterated."""

    def __init__(self, *args: int) -> None:
        self._range = safe_range(*args)  # jinja2's MAX_RANGE check

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i: Any) -> Any:
        return self._range[i]

    def __iter__(self) -> Iterator[int]:
        for n, value in enumerate(self._range):
            if not n & 1023:
                _tick()
            yield value


def _check_size(operator: str, left: Any, right: Any) -> None:
    ints = [isinstance(v, int) and not isinstance(v, bool) for v in (left, right)]
    if operator == "**" and all(ints) and abs(left) > 1:
        if right > 0 and abs(left).bit_length() * right > _MAX_RESULT_BITS:
            raise _TemplateTooCostly(f"{left} ** {right} is too large")
    if operator == "*" and any(ints) and not all(ints):
        count, seq = (left, right) if ints[0] else (right, left)
        if isinstance(seq, (str, list, tuple)) and max(len(seq), 1) * count > _MAX_REPEAT:
            raise _TemplateTooCostly(f"repeating {len(seq)} items {count} times is too large")


class _Sandbox(ImmutableSandboxedEnvironment):
    """HF's sandbox, except that touching an unsafe attribute fails at once (jinja2 would
    render it as an empty Undefined and fail only if it is used further), and with the cost
    limits above."""

    intercepted_binops = frozenset({"**", "*"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_size(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        if isinstance(getattr(__obj, "__self__", None), str) and any(
            isinstance(a, int) and a > _MAX_REPEAT for a in (*args, *kwargs.values())
        ):
            raise _TemplateTooCostly(f"{__obj.__name__}() with a width over {_MAX_REPEAT}")
        return super().call(__context, __obj, *args, **kwargs)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlocks, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _TimedRange
    return env


def _content_text(content: Any, where: str) -> str:
    """A message's content as one string: OpenAI text parts joined by newlines (as llama.cpp)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(
            f"{where}.content must be a string or a list of text parts, "
            f"not {type(content).__name__}",
            "messages",
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise RequestError(
                f"{where}.content[{j}] must be a {{'type': 'text', 'text': ...}} part, "
                f"not {kind!r} (only text is supported)",
                "messages",
            )
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.content[{j}].text must be a string", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Checked copies of chat messages ({role, content, ...}) with string content."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            "messages must be a non-empty list of {role, content} objects", "messages"
        )
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise RequestError(
                f"{where} must be an object with role and content, not {type(message).__name__}",
                "messages",
            )
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(f"{where}.role must be a non-empty string", "messages")
        if "content" not in message and "tool_calls" not in message:
            raise RequestError(f"{where} has no content", "messages")
        copy = dict(message)
        copy["content"] = _content_text(message.get("content"), where)
        checked.append(copy)
    return checked


class ChatTemplate:
    """A compiled chat template and the special-token texts it renders with."""

    def __init__(
        self,
        source: str,
        bos_token: str = "",
        eos_token: str = "",
        add_bos: bool = False,
        add_eos: bool = False,
        origin: str = "tokenizer.chat_template",
    ) -> None:
        self.source = source
        self.origin = origin  # where the template came from: the file, or a built-in default
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos, self.add_eos = add_bos, add_eos
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TokenizerError(
                f"chat template ({origin}) has a syntax error at line {exc.lineno}: {exc.message}"
            ) from None

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        tokenizer: Any = None,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos: bool | None = None,
        add_eos: bool | None = None,
    ) -> ChatTemplate:
        """The file's template, or the built-in one for its architecture, or ChatML.

        BOS/EOS texts and add flags come from `tokenizer` (a warmload Tokenizer) when given;
        the keywords override them (without either: "" and False).
        """
        source = metadata.get("tokenizer.chat_template")
        origin = "tokenizer.chat_template"
        if not isinstance(source, str) or not source.strip():
            name, source = builtin_template(metadata.get("general.architecture"))
            origin = f"built-in {name} default"

        def pick(value: Any, name: str, default: Any) -> Any:
            return value if value is not None else getattr(tokenizer, name, default)

        return cls(
            source,
            pick(bos_token, "bos_token", ""),
            pick(eos_token, "eos_token", ""),
            pick(add_bos, "add_bos", False),
            pick(add_eos, "add_eos", False),
            origin,
        )

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        """From a warmload Tokenizer alone (it keeps the file's chat_template and architecture)."""
        metadata = {
            "tokenizer.chat_template": tokenizer.chat_template,
            "general.architecture": tokenizer.architecture,
        }
        return cls.from_metadata(metadata, tokenizer)

    def render(self, messages: Any, add_generation_prompt: bool = True, **extra: Any) -> str:
        """The conversation as the template writes it (Hugging Face's apply_chat_template text)."""
        variables = {
            "tools": None,
            "documents": None,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": validate_messages(messages),
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._render_limited(variables)
        except _TemplateRaised as exc:
            raise RequestError(f"chat template rejected the messages: {exc}", "messages") from None
        except SecurityError as exc:
            raise TokenizerError(
                f"chat template ({self.origin}) tried an unsafe operation: {exc}"
            ) from None
        except (_TemplateTooCostly, OverflowError, RecursionError, MemoryError) as exc:
            why = (
                str(exc) if isinstance(exc, _TemplateTooCostly) else f"{type(exc).__name__}: {exc}"
            )
            raise TokenizerError(
                f"chat template ({self.origin}) is too costly to render: {why}"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise RequestError(
                f"chat template ({self.origin}) failed on these messages: "
                f"{type(exc).__name__}: {exc}",
                "messages",
            ) from None

    def _render_limited(self, variables: dict[str, Any]) -> str:
        _budget.deadline = time.monotonic() + RENDER_SECONDS
        try:
            parts, size = [], 0
            for part in self._template.generate(**variables):
                parts.append(part)
                size += len(part)
                if size > MAX_OUTPUT_CHARS:
                    raise _TemplateTooCostly(f"output longer than {MAX_OUTPUT_CHARS} characters")
                _tick()
            return "".join(parts)
        finally:
            _budget.deadline = None

    def render_prompt(self, messages: Any, add_generation_prompt: bool = True, **extra: Any) -> str:
        """render(), minus a leading BOS / trailing EOS text the tokenizer adds itself: encode the
        result with add_special=True, parse_special=True (no duplicate BOS)."""
        text = self.render(messages, add_generation_prompt, **extra)
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.add_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text
