"""Typed configs from TOML tables and `-o key=value` overrides, with every problem reported at once.

Stage configs, resources and cluster profiles are plain dataclasses; this module turns untyped mappings into
them and says exactly which key is unknown or ill-typed, and what would have been valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from medminds_hpc.errors import UserError

_NONE_WORDS = {"none", "null", ""}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, *, from_text: bool = False) -> Any:
    """Return `value` converted to `tp`, or raise ValueError saying what was expected.

    `from_text` is set for command-line overrides, where everything arrives as a string.
    """
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (from_text and str(value).strip().lower() in _NONE_WORDS)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, from_text=from_text)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or (from_text and str(value) == str(c)):
                return c
        raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if from_text and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"expected a JSON list like [1, 2], got {value!r}") from e
                return [coerce(inner, v) for v in value]
            return [coerce(inner, v.strip(), from_text=True) for v in text.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return [coerce(inner, v, from_text=from_text) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in {"true", "1", "yes", "on"}:
            return True
        if from_text and str(value).lower() in {"false", "0", "no", "off"}:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if from_text:
            try:
                return int(str(value).replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_text:
            try:
                return float(str(value))
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise ValueError(f"unsupported field type {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    return dict(_field_types(cls))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved once per class: get_type_hints evaluates every annotation's text, the bulk of planning a study."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.init}


def unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


def check_mapping(cls: type, mapping: dict[str, Any], *, from_text: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Coerce a mapping to `cls`'s field types; return (values, problems) without raising."""
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in mapping.items():
        if key not in types_:
            problems.append(unknown_key_message(key, list(types_)))
            continue
        try:
            values[key] = coerce(types_[key], value, from_text=from_text)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    return values, problems


def build(cls: type, mapping: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `mapping`, raising one UserError listing every problem."""
    values, problems = check_mapping(cls, mapping)
    if not problems:
        try:
            obj = cls(**values)
        except TypeError as e:  # a required field is missing
            problems.append(str(e).replace("__init__() ", ""))
        except ValueError as e:  # __post_init__ validation
            problems.append(str(e))
        else:
            return obj
    raise UserError(f"{where}: " + "; ".join(problems))
