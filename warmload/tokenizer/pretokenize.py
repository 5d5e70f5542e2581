"""Byte-level BPE pre-tokenizers: `tokenizer.ggml.pre` name -> split regexes and flags (data).

Transcribed from llama.cpp's `llm_tokenizer_bpe` constructor and the `tokenizer_pre` table of
`llama_vocab::impl::load` (src/llama-vocab.cpp). llama.cpp applies the regexes one after the
other, each splitting the pieces left by the previous one and keeping the text between matches
as pieces of its own: that is `tokenizers.pre_tokenizers.Split(regex, "isolated")` in sequence.
The regexes are llama.cpp's adapted forms (`(?i:'s|...)` spelled out as classes). llama.cpp runs
the non-custom ones on a "collapsed" text where every non-ASCII letter is one LETTER class, so
\\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm} and \\p{Lo} all behave as \\p{L} there; `_collapse_letters`
gives onig the same meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from warmload.errors import UnsupportedError

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CJK_DEEPSEEK = "[一-龥ࠀ-一가-\ud7ff]+"
_CJK_KANA = "[一-龥\u3040-ゟ゠-ヿ]+"
_DEEPSEEK3_MAIN = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)
_UPPER_LOWER_WORDS = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+SUFFIX"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*SUFFIX"
)
_CASED_WORDS = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+SUFFIX"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*SUFFIX"
)
_PORO = " ?[^(\\s|.,!?…。，、।۔،)]+"

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_* -> regexes, applied in order.
REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "llama3": (_LLAMA3,),
    "jais2": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
        r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
    ),
    "deepseek-llm": (
        "[\r\n]",
        "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
        "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
        "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8"
        "-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-"
        "\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-"
        "\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-"
        "\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-"
        "\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
        "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
        "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13"
        "-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
        "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
        "\U0001e900-\U0001e943]+",
        # llama.cpp's std::wregex leaves U+3000 out of this class (measured): start it at U+3001
        "\\s?[!-/:-~！-／：-～‘-‟、-。]+",
        r"\s+$",
        _CJK_DEEPSEEK,
        r"\p{N}+",
    ),
    "deepseek3": (r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_MAIN),
    "spark2_5": (
        r"\p{N}{1,3}",
        _CJK_KANA,
        _DEEPSEEK3_MAIN.replace("[\r\n]*|\\s*[\r\n]+", "|[\r\n]"),
        r"\p{N}",
    ),
    "youtu": (
        "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|" + _CJK_KANA,
        _CASED_WORDS.replace("SUFFIX", _CONTRACTIONS + "?")
        + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_DEEPSEEK, r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2),
    "gpt2": (_GPT2,),
    "qwen2": (_QWEN2,),
    "qwen35": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "poro": (_PORO,),
    "viking": (_PORO, r"\p{N}"),
    "tekken": (
        _UPPER_LOWER_WORDS.replace("SUFFIX", "")
        + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "chameleon": (
        "<sentinel:[0-9]+>",
        "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        _GPT2,
    ),
    "gpt4o": (
        _UPPER_LOWER_WORDS.replace("SUFFIX", _CONTRACTIONS + "?")
        + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "granite-emb-multi": (
        _UPPER_LOWER_WORDS.replace("SUFFIX", _CONTRACTIONS + "?").replace(
            r"(?=[\p{L}])", r"(?=[\p{L}\p{M}])"
        )
        + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "tiny-aya": (
        r"\d{1,3}(?=(?:\d{3})*\b)",
        _CASED_WORDS.replace("SUFFIX", _CONTRACTIONS + "?")
        + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "bailingmoe": (
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "seed-coder": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ),
    "ufakzeka": (_QWEN2[len(_CONTRACTIONS) + 1 :],),
    "laguna": (r"[^\n]+|[\n]+", _QWEN2),
    "exaone-moe": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "minicpm5": (
        r"\p{N}{1,3}",
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}


@dataclass(frozen=True, slots=True)
class PreTokenizer:
    name: str  # the tokenizer.ggml.pre value
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is not merged (llama3, tekken)
    add_bos: bool = False  # llama.cpp's default before tokenizer.ggml.add_bos_token
    no_bos: bool = False  # chatglm/glm4: no default BOS id


# tokenizer.ggml.pre -> (REGEXES key, flags); flags: "i" ignore_merges, "b" add_bos, "n" no BOS.
PRE_NAMES: dict[str, tuple[str, str]] = {
    "default": ("default", ""),
    "minicpm5": ("minicpm5", "i"),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano"),
        ("llama3", "ib"),
    ),
    "deepseek-llm": ("deepseek-llm", ""),
    "deepseek-coder": ("deepseek-coder", ""),
    "deepseek-v3": ("deepseek3", ""),
    "spark2_5": ("spark2_5", ""),
    "youtu": ("youtu", "i"),
    "falcon": ("falcon", ""),
    "mpt": ("gpt2", ""),
    "starcoder": ("starcoder", ""),
    **dict.fromkeys(
        ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
         "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "olmo", "jais",
         "exaone4", "trillion", "granite-docling"),
        ("gpt2", ""),
    ),
    "jais-2": ("jais2", ""),
    **dict.fromkeys(
        ("refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
        ("starcoder", ""),
    ),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan",
         "solar-open", "grok-2"),
        ("qwen2", ""),
    ),
    "qwen35": ("qwen35", ""),
    **dict.fromkeys(("dbrx", "smaug-bpe"), ("llama3", "")),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), ("poro", "")),
    "chatglm-bpe": ("llama3", "n"),
    **dict.fromkeys(("glm4", "glm5"), ("llama3", "in")),
    "viking": ("viking", ""),
    "tekken": ("tekken", "ib"),
    "chameleon": ("chameleon", "b"),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), ("gpt4o", "")),
    "granite-embed-multi-97m": ("granite-emb-multi", "i"),
    **dict.fromkeys(("tiny_aya", "cohere2moe"), ("tiny-aya", "")),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), ("bailingmoe", "")),
    "seed-coder": ("seed-coder", ""),
    **dict.fromkeys(("hunyuan-dense", "hy_v4", "joyai-llm"), ("deepseek3", "")),
    "ufakzeka": ("ufakzeka", ""),
    "laguna": ("laguna", ""),
    "exaone-moe": ("exaone-moe", ""),
}  # fmt: skip

_LETTER_SUBCLASSES = re.compile(r"\\p\{L[ultmo]\}")


def _collapse_letters(regex: str) -> str:
    return _LETTER_SUBCLASSES.sub(r"\\p{L}", regex)


def find_pre_tokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre == name`."""
    entry = PRE_NAMES.get(name)
    if entry is None:
        raise UnsupportedError(
            f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported; supported: "
            f"{', '.join(sorted(PRE_NAMES))}"
        )
    key, flags = entry
    return PreTokenizer(
        name=name,
        regexes=tuple(_collapse_letters(r) for r in REGEXES[key]),
        ignore_merges="i" in flags,
        add_bos="b" in flags,
        no_bos="n" in flags,
    )
