"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names what is wrong, where, and how to fix it."""


class StageNotImplemented(UserError):
    """The experiment is valid but its stage has not been built yet."""
