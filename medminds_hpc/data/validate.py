"""Bad-row bookkeeping: every problem names file, row, field and what was expected; strict raises, skip counts.

`strict` (default) refuses to prepare data with any invalid row and lists up to 20 problems in ONE line, so a user
fixes them all in one go. `skip` drops each bad row and counts it under the reason of its first problem; the counts
go into the data card, so a dropped row is never silent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

from medminds_hpc.errors import UserError

Policy = Literal["strict", "skip"]
POLICIES: tuple[str, ...] = ("strict", "skip")
MAX_LISTED = 20
MAX_COLUMNS_LISTED = 30
# how a user asks for bad_rows=skip depends on the command that ran prepare
SUBMIT_SKIP_FLAG = "-o bad_rows=skip (-o prepare.bad_rows=skip when submitting an experiment that needs this data)"
CLI_SKIP_FLAG = "--bad-rows skip"

# reasons: the keys of the card's "dropped" counts (missing / empty / wrong type are suffixed with the field)
MISSING = "missing field"
OUT_OF_RANGE = "answer out of range"
NOT_STRING = "non-string option"
WRONG_TYPE = "wrong type"
DUPLICATE = "duplicate id"
BAD_JSON = "unreadable row"
BAD_VALUE = "invalid value"


def check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise UserError(f"bad_rows={policy!r} is not a policy; valid: strict (fail on invalid rows) or skip (drop and count them)")
    return policy  # type: ignore[return-value]


def shown(value: Any, limit: int = 60) -> str:
    """A value for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    where: str  # "path line 12 (id 'abc')"
    field: str
    expected: str
    got: Any
    reason: str
    text: str = ""  # the whole message after `where`, when "expected X, got Y" would say it less plainly

    def message(self) -> str:
        if self.text:
            return f"{self.where}: {self.text}"
        got = "nothing (field absent or null)" if self.reason.startswith(MISSING) else shown(self.got)
        return f"{self.where}: field {self.field!r}: expected {self.expected}, got {got}"


@dataclass
class BadRows:
    """Collects the problems of one source (e.g. MedMCQA) and applies the policy at the end."""

    what: str
    policy: Policy = "strict"
    skip_flag: str = SUBMIT_SKIP_FLAG  # named in the strict error as the way to drop bad rows
    problems: list[Problem] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    def row(self, problems: list[Problem]) -> bool:
        """Record one row's problems; True when the row is good and should be kept."""
        if not problems:
            return True
        self.problems.extend(problems)
        self.dropped[problems[0].reason] += 1
        return False

    def drop(self, reason: str, n: int = 1) -> None:
        """Count rows dropped by design, not by error (e.g. ARC items with fewer than 4 options)."""
        self.dropped[reason] += n

    @property
    def count(self) -> int:
        return sum(self.dropped.values())

    def finish(self) -> dict[str, int]:
        """Raise under `strict` when any row was bad; otherwise return the drop counts for the card."""
        if self.policy == "strict" and self.problems:
            listed = [p.message() for p in self.problems[:MAX_LISTED]]
            more = len(self.problems) - len(listed)
            if more:
                listed.append(f"... and {more} more problems")
            raise UserError(
                f"{self.what}: {self.count} invalid row(s); fix them, or pass {self.skip_flag} to drop and count them: "
                + "; ".join(listed)
            )
        return dict(sorted(self.dropped.items()))


def missing(where: str, key: str, expected: str) -> Problem:
    return Problem(where, key, expected, None, f"{MISSING} {key!r}")


def require_text(row: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> list[Problem]:
    """A present, string-valued (and unless allowed, non-blank) field."""
    if row.get(key) is None:
        return [missing(where, key, "a non-empty string")]
    value = row[key]
    if not isinstance(value, str):
        return [Problem(where, key, "a string", value, f"{WRONG_TYPE} {key!r}")]
    if not allow_empty and not value.strip():
        return [Problem(where, key, "a non-empty string", value, f"empty {key}")]
    return []


def as_int(value: Any) -> int | None:
    """An integer from int, integral float (CSV/parquet with nulls) or a digit string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return None


class IdRegistry:
    """Duplicate-id detection across all files of a source, naming where the id was first seen."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def check(self, id_: str, where: str) -> list[Problem]:
        first = self._seen.get(id_)
        if first is not None:
            return [Problem(where, "id", f"a unique id (already used at {first})", id_, DUPLICATE)]
        self._seen[id_] = where
        return []


def absent(found: Iterable[str], needed: Sequence[str]) -> list[str]:
    """The needed columns no row has; "a|b" is satisfied by either name."""
    have = set(found)
    return [n for n in needed if not any(alt in have for alt in n.split("|"))]


def columns_error(source: str, what: str, found: Iterable[str], missing: Sequence[str],
                  layouts: Mapping[str, Sequence[str]]) -> UserError:
    """A file whose rows all lack a needed column is the wrong file, not many bad rows: one line with the columns
    it has and those expected (raised under skip too, where every row would silently go)."""
    cols = list(dict.fromkeys(found))
    shown = ", ".join(cols[:MAX_COLUMNS_LISTED]) + (f", ... ({len(cols)} in all)" if len(cols) > MAX_COLUMNS_LISTED else "")
    expected = "; or ".join(f"{', '.join(c.replace('|', ' or ') for c in needed)} ({name})" for name, needed in layouts.items())
    return UserError(f"{source}: not {what} data: no row has {', '.join(m.replace('|', ' or ') for m in missing)}; "
                     f"its columns are {shown or '(none)'}; expected {expected}")
