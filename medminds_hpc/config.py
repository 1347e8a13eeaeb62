"""Typed configs from TOML tables and `-o key=value` overrides, with every problem reported at once.

Stage configs, resources and cluster profiles are plain dataclasses; this module turns untyped mappings into
them and says exactly which key is unknown, ill-typed or outside its domain, and what would have been valid.

A field's domain is declared beside its type and help, and a class's relations between fields beside its fields:

    lora_r: int = field(default=16, metadata=doc("LoRA rank", ge=1))
    RELATIONS = (Relation(("batch_size", "grad_accum"), lambda c: c.batch_size % c.grad_accum == 0,
                          "batch_size must be a multiple of grad_accum"),)

`check_mapping` and `build` read these declarations; no config checks its own ranges by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin

from medminds_hpc.errors import UserError, many

_NONE_WORDS = {"none", "null", ""}
# what a whole number may be when its field declares no upper bound: seeds, steps and rows all fit a C int
INT_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Domain:
    """The values a field takes beyond its type: bounds (floats are always finite), list lengths, text formats."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None  # a list of exactly this many items
    nonempty: bool = False  # a string or list with something in it
    pattern: str | None = None  # a string matching this regular expression (whole)
    pattern_text: str = ""  # how the pattern reads to a person, e.g. "N[K|M|G|T]"
    parse: Callable[[Any], Any] | None = None  # a check that raises ValueError with its own words (e.g. Slurm time)

    def bounds_text(self, words: bool = False) -> str:
        """'>= 1', '(0, 1]'; in words (error messages): 'at least 1', 'more than 0', 'in (0, 1]'."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            interval = f"{'[' if self.ge is not None else '('}{_num(low)}, {_num(high)}{']' if self.le is not None else ')'}"
            return f"a value in {interval}" if words else interval
        if low is not None:
            if words:
                return f"{'at least' if self.ge is not None else 'more than'} {_num(low)}"
            return f"{'>=' if self.ge is not None else '>'} {_num(low)}"
        if high is not None:
            if words:
                return f"{'at most' if self.le is not None else 'less than'} {_num(high)}"
            return f"{'<=' if self.le is not None else '<'} {_num(high)}"
        return ""

    def describe(self, tp: Any = None) -> str:
        """How `medminds list` shows the domain: '> 0, finite', '>= 1', '2 items', 'N[K|M|G|T]'."""
        parts = [self.bounds_text()] if self.bounds_text() else []
        if self.length is not None:
            parts.append(f"{self.length} items")
        if self.nonempty:
            parts.append("not empty")
        if self.pattern_text:
            parts.append(self.pattern_text)
        if _is_float(tp) and not any(p.startswith("finite") for p in parts):
            parts.append("finite")
        return ", ".join(parts)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value already of the field's type, or None."""
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number{self._also()}, got {value!r}"
        if isinstance(value, (int, float)):
            if isinstance(value, int) and self.le is None and self.lt is None and abs(value) > INT_LIMIT:
                return f"expected a whole number up to {INT_LIMIT:,}{self._also()}, got {value!r}"
            ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
            if not ok:
                return f"expected {self.bounds_text(words=True)}, got {value!r}"
        if isinstance(value, (str, list)):
            if self.nonempty and not (value.strip() if isinstance(value, str) else value):
                return f"expected something, got {value!r}"
            if self.length is not None and len(value) != self.length:
                return f"expected {self.length} items, got {len(value)}: {value!r}"
        if isinstance(value, list):
            for item in value:
                bad = self.problem(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else None
                if bad:
                    return f"item {item!r}: {bad}"
        if isinstance(value, str) and self.pattern is not None and not re.fullmatch(self.pattern, value.strip()):
            return f"expected {self.pattern_text or 'text matching ' + self.pattern}, got {value!r}"
        if self.parse is not None:
            try:
                self.parse(value)
            except ValueError as e:
                return str(e)
        return None

    def _also(self) -> str:
        return f", {self.bounds_text(words=True)}" if self.bounds_text() else ""


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _is_float(tp: Any) -> bool:
    return tp is float or (get_origin(tp) in (Union, types.UnionType) and float in get_args(tp)) or \
        (get_origin(tp) is list and get_args(tp) == (float,))


NO_DOMAIN = Domain()


@dataclass(frozen=True)
class Relation:
    """A rule between fields of one config, checked once each field is valid on its own."""

    keys: tuple[str, ...]
    holds: Callable[[Any], bool]
    text: str  # what must be true, e.g. "batch_size must be a multiple of grad_accum"

    def problem(self, obj: Any) -> str | None:
        if self.holds(obj):
            return None
        values = ", ".join(f"{k}={getattr(obj, k)!r}" for k in self.keys)
        return f"{values}: {self.text}"


def doc(text: str, **domain: Any) -> dict[str, Any]:
    """A field's metadata: its help and, as keywords of Domain, its valid values (`ge=1`, `gt=0, le=1`, ...)."""
    return {"help": text, "domain": Domain(**domain)} if domain else {"help": text}


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


@functools.cache
def domains(cls: type) -> dict[str, Domain]:
    """Each field's declared domain, from the nearest class of the MRO that declares it (a stage that only changes
    a shared training field's default keeps that field's domain)."""
    out: dict[str, Domain] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        for f in dataclasses.fields(klass):
            if f.init and "domain" in f.metadata:
                out[f.name] = f.metadata["domain"]
    return {name: out.get(name, NO_DOMAIN) for name in _field_types(cls)}


def relations(cls: type) -> list[Relation]:
    """The class's RELATIONS and those of its bases, each once."""
    seen: list[Relation] = []
    for klass in reversed(cls.__mro__):
        for r in vars(klass).get("RELATIONS", ()):
            if r not in seen:
                seen.append(r)
    return seen


def describe_domain(cls: type, name: str) -> str:
    return domains(cls)[name].describe(_field_types(cls)[name])


def relation_problems(obj: Any) -> list[str]:
    return [p for r in relations(type(obj)) if (p := r.problem(obj))]


def unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


def check_mapping(cls: type, mapping: dict[str, Any], *, from_text: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Coerce a mapping to `cls`'s field types; return (values, problems) without raising."""
    types_ = field_types(cls)
    declared = domains(cls)
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
            continue
        bad = declared[key].problem(values[key])
        if bad:
            del values[key]
            problems.append(f"{key}: {bad}")
    return values, problems


def problems_of(cls: type, mapping: dict[str, Any], *, from_text: bool = False) -> tuple[Any, list[str]]:
    """`cls` built from `mapping` and every problem with it (types, domains, relations, its own __post_init__);
    the object is None when it could not be built."""
    values, problems = check_mapping(cls, mapping, from_text=from_text)
    if problems:
        return None, problems
    try:
        obj = cls(**values)
    except TypeError as e:  # a required field is missing
        return None, [str(e).replace("__init__() ", "")]
    except ValueError as e:  # __post_init__ validation: one problem a line, each naming its key
        return None, [p for p in str(e).split("\n") if p]
    bad = relation_problems(obj)
    return (None, bad) if bad else (obj, [])


def build(cls: type, mapping: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `mapping`, raising one UserError with a line for every problem."""
    obj, problems = problems_of(cls, mapping)
    if problems:
        raise many([f"{where}: {p}" for p in problems])
    return obj
