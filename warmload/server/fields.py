"""Field checks at the HTTP boundary: the JSON body, typed getters and numeric ranges.

Everything a request carries is checked here before it reaches the engine: JSON that is not an
object, nested past MAX_JSON_DEPTH or holding NaN/Infinity; numbers of the wrong type, not
finite or out of range (a seed torch cannot take); each error a RequestError naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from warmload.errors import RequestError
from warmload.sampling import SEED_MAX, SEED_MIN

NUMBER = (int, float)
MAX_JSON_DEPTH = 64  # objects/arrays nested deeper are refused (JSON schemas stay far below)
MAX_TOKENS_LIMIT = 1 << 30  # "no limit" (Ollama's num_predict -1); the context bounds it anyway


def _reject_constant(name: str) -> float:
    raise RequestError(f"request body holds {name}, which is not valid JSON", "body")


def _depth(value: Any, limit: int) -> int:
    """How deep arrays/objects nest in a parsed value (level by level; stops past `limit`)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        nested = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            nested += [c for c in children if isinstance(c, (list, dict))]
        level = nested
    return depth


def parse_json(body: bytes, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a RequestError (param "body")."""
    if len(body) > max_bytes:
        raise RequestError(f"request body is {len(body)} bytes; the limit is {max_bytes}", "body")
    too_deep = RequestError(
        f"request body nests arrays/objects more than {MAX_JSON_DEPTH} deep", "body"
    )
    try:
        data = json.loads(body or b"null", parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", "body") from None
    except RecursionError:  # the decoder's own limit (about 1000 levels)
        raise too_deep from None
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and (
        _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    ):
        raise too_deep
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", "body")
    return data


def type_names(types: type | tuple[type, ...]) -> str:
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


def get(
    data: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = None
) -> Any:
    """data[name] checked against `types` (booleans are not numbers), default when absent/null."""
    value = data.get(name, default)
    if value is None:
        return default
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise RequestError(f"{name} must be {type_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise RequestError(f"{name} must be {type_names(types)}, got {type(value).__name__}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value}", name)
    return value


def get_number(
    data: dict[str, Any], name: str, lo: float, hi: float, default: Any = None
) -> float | None:
    """A finite number in [lo, hi]."""
    value = get(data, name, NUMBER, default)
    if value is None:
        return None
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be in [{lo}, {hi}], got {value}", name)
    return float(value)


def get_int(data: dict[str, Any], name: str, lo: int, hi: int, default: Any = None) -> int | None:
    """An integer in [lo, hi] (a float with an integral value, as JavaScript sends, is taken)."""
    value = data.get(name, default)
    if isinstance(value, float) and value.is_integer() and lo <= value <= hi:
        value = int(value)
    value = get({name: value}, name, int)
    if value is None:
        return default
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be an integer in {lo}..{hi}, got {value}", name)
    return value


def get_seed(data: dict[str, Any], name: str = "seed") -> int | None:
    """A sampler seed: -2**63..2**64-1 (OpenAI's int64 and llama.cpp's uint32 both fit)."""
    return get_int(data, name, SEED_MIN, SEED_MAX)


def string_list(data: dict[str, Any], name: str, max_items: int) -> list[str]:
    """A string or an array of non-empty strings (stop)."""
    value = data.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise RequestError(f"{name} must be a non-empty string or an array of them", name)
    if len(value) > max_items:
        raise RequestError(f"{name} has {len(value)} strings; at most {max_items} allowed", name)
    return value
