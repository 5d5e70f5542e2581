"""Chat templates: the packaged models' templates rendered to the exact strings Hugging Face's
apply_chat_template gives (written out by hand from the templates), BOS handling, the ChatML
default, raise_exception, message validation and the sandbox."""

from __future__ import annotations

import datetime

import pytest

from warmload.chat import CHATML_TEMPLATE, GEMMA3_TEMPLATE, ChatTemplate, validate_messages
from warmload.errors import RequestError, TokenizerError
from warmload.formats.open import open_checkpoint
from warmload.tokenizer import load_tokenizer

TWO_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Why is the sky blue?"},
]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return load_tokenizer(gemma3_path)


def test_smollm2_template_from_the_file(smollm2_path, smollm2):
    with open_checkpoint(smollm2_path) as checkpoint:
        template = ChatTemplate.from_metadata(checkpoint.metadata, smollm2)
        explicit = ChatTemplate.from_metadata(
            checkpoint.metadata, bos_token="<|im_start|>", eos_token="<|im_end|>"
        )
    assert template.origin == "tokenizer.chat_template"
    assert (template.bos_token, template.eos_token, template.add_bos) == (
        "<|im_start|>", "<|im_end|>", False,
    )  # fmt: skip
    assert template.source == explicit.source == smollm2.chat_template
    expected = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert template.render(TWO_TURNS) == expected
    assert template.render(TWO_TURNS, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )
    # a system message replaces the default one
    with_system = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:1]]
    assert ChatTemplate.for_tokenizer(smollm2).render_prompt(with_system) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_gemma3_builtin_template(gemma3):
    assert gemma3.chat_template is None  # this GGUF (the base model) ships no template
    template = ChatTemplate.for_tokenizer(gemma3)
    assert template.source == GEMMA3_TEMPLATE and template.origin == "built-in gemma3 default"
    messages = [{"role": "system", "content": "  Be brief.  "}, *TWO_TURNS]
    expected = (
        "<bos><start_of_turn>user\n  Be brief.  \n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.render(messages) == expected
    # the tokenizer adds BOS itself: render_prompt drops the template's, so there is one BOS
    prompt = template.render_prompt(messages)
    assert prompt == expected.removeprefix("<bos>")
    ids = gemma3.encode(prompt, add_special=True, parse_special=True)
    assert ids == gemma3.encode(expected, add_special=False, parse_special=True)
    assert ids[:3] == [2, 105, 2364] and ids.count(2) == 1
    assert ids[-3:] == [105, 4368, 107]  # <start_of_turn> model \n


def test_gemma3_rejects_wrong_role_order(gemma3):
    template = ChatTemplate.for_tokenizer(gemma3)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(RequestError, match="Conversation roles must alternate") as info:
        template.render(bad)
    assert info.value.param == "messages"


def test_chatml_default_without_a_template():
    template = ChatTemplate.from_metadata({"general.architecture": "llama"})
    assert template.source == CHATML_TEMPLATE and template.origin == "built-in chatml default"
    assert template.render(TWO_TURNS[:1]) == (
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render(TWO_TURNS[:1], add_generation_prompt=False) == (
        "<|im_start|>user\nHi there<|im_end|>\n"
    )


def test_bos_and_eos_stripped_only_when_the_tokenizer_adds_them():
    source = "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
    messages = [{"role": "user", "content": "x"}]
    assert ChatTemplate(source, "<s>", "</s>").render_prompt(messages) == "<s>x</s>"
    both = ChatTemplate(source, "<s>", "</s>", add_bos=True, add_eos=True)
    assert both.render(messages) == "<s>x</s>"
    assert both.render_prompt(messages) == "x"


def test_content_parts_and_validation():
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert validate_messages([{"role": "user", "content": parts}])[0]["content"] == "one\ntwo"
    assert (
        validate_messages([{"role": "assistant", "content": None, "tool_calls": []}])[0]["content"]
        == ""
    )
    bad_inputs = [
        ("not a list", "non-empty list"),
        ([], "non-empty list"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"content": "x"}], r"messages\[0\].role"),
        ([{"role": "user"}], r"messages\[0\] has no content"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\].text"),
    ]
    template = ChatTemplate(CHATML_TEMPLATE)
    for messages, message in bad_inputs:
        with pytest.raises(RequestError, match=message) as info:
            template.render(messages)
        assert info.value.param == "messages"


def test_sandbox_blocks_python_internals():
    messages = [{"role": "user", "content": "x"}]
    escapes = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__ }}",
        "{% set _ = messages.append({'role': 'x'}) %}",
        "{{ raise_exception.__globals__ }}",
        "{{ messages.__class__ }}",  # jinja2 alone would render this as ""
    ]
    for source in escapes:
        with pytest.raises(TokenizerError, match="unsafe"):
            ChatTemplate(source).render(messages)


def test_hugging_face_environment():
    render = ChatTemplate(
        "{{ {'k': '<a>&é'} | tojson }}|{{ [1, 2] | tojson(indent=1) }}|{{ strftime_now('%Y') }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}"
        "{% endfor %}|{% generation %}kept{% endgeneration %}|{{ extra }}|{{ tools }}"
    ).render
    year = datetime.datetime.now().strftime("%Y")
    out = render(TWO_TURNS, extra="passed")
    assert out == '{"k": "<a>&é"}|[\n 1,\n 2\n]|' + year + "|user|kept|passed|None"
    trimmed = ChatTemplate("{% if true %}\n  a\n{% endif %}\nb").render(TWO_TURNS)
    assert trimmed == "  a\nb"  # trim_blocks and lstrip_blocks


def test_syntax_error_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="syntax error at line 2"):
        ChatTemplate("ok\n{% if %}")


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10**9) %}{{ i }}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 7 ** 2000000000 }}",
        "{{ (10 ** 100000) }}",
        "{{ 'abc' * 4000000000 }}",
        "{{ [1, 2] * 4000000000 }}",
        "{{ 'a'.rjust(4000000000) }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",  # 100 MB of output
    ],
)
def test_costly_templates_stop_with_a_tokenizer_error(source):
    """Issue 17 item 11: a template from a model file cannot hang or exhaust memory."""
    import time

    template = ChatTemplate(source)
    start = time.monotonic()
    with pytest.raises(TokenizerError, match="too costly to render"):
        template.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 5  # the limit is 0.5 s; generous for a loaded machine


def test_ordinary_arithmetic_and_repetition_still_render():
    template = ChatTemplate("{{ 2 ** 10 }} {{ '=' * 3 }} {{ 3 * 4 }} {{ range(3)|list }}")
    assert template.render([{"role": "user", "content": "hi"}]) == "1024 === 12 [0, 1, 2]"
