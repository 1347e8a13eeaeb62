"""The one exception type the CLI turns into a message and exit code 2: one line a problem."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names what is wrong, where, and how to fix it."""

    @property
    def problems(self) -> list[str]:
        """Each problem on its own (one, unless the error was made by `many`)."""
        return list(getattr(self, "_problems", None) or [str(self)])


class StageNotImplemented(UserError):
    """The experiment is valid but its stage has not been built yet."""


def many(problems: list[str]) -> UserError:
    """One error for every problem found: the problem itself when there is one, else a line saying how many and
    then one line each (each naming its file, option or key)."""
    unique = list(dict.fromkeys(line for p in problems for line in p.splitlines() if line.strip()))
    if len(unique) == 1:
        return UserError(unique[0])
    error = UserError(f"{len(unique)} problems:\n" + "\n".join(unique))
    error._problems = unique  # type: ignore[attr-defined]
    return error
