"""Errors the user fixes by changing the command: `fedkseed` prints their one line, no traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input (a flag, a path, a file) with a message that names the problem and the fix.

    `fedkseed` (kit.cli.main) prints `fedkseed: error: <message>` and exits with status 2; called as
    a library the error propagates like any ValueError.
    """


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), to quote as the reason."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
