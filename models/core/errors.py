"""The errors every layer raises, and how their messages are shown: on one line."""

from __future__ import annotations

import re
import reprlib

# What an error may quote of a user's value, and the longest message a GdlError carries: a value
# that expands (YAML aliases) or a pasted file must not turn into a 58 MB error line.
ECHO_LIMIT = 200
MESSAGE_LIMIT = 2000
# Control characters (C0, DEL, C1, Unicode line/paragraph separators): a newline or an escape
# sequence in a value would start a line of its own or repaint the terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A user's value as an error quotes it: repr-style (control characters escaped), at most
    `limit` characters with an ellipsis; deep or long structures are abbreviated, not walked."""
    if isinstance(value, str | bytes):
        return _cut(repr(value[: limit + 1]), limit)
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    return _cut(short.repr(value), limit)


class GdlError(Exception):
    """An error the user can act on; the CLI prints its message as one line: control characters
    in it are escaped and it is cut at MESSAGE_LIMIT characters, whatever a value brought in."""

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_cut(_escaped(args[0]), MESSAGE_LIMIT),)
        super().__init__(*args)


class RetryableError(GdlError):
    """A failure that may pass on a later try (network trouble), unlike a bad input."""


def one_line(text: object) -> str:
    """An exception's message on one line (some span several: urllib's redirect loop)."""
    return " ".join(str(text).split())


class BudgetReached(Exception):
    """Training stopped at its time budget (`max_train_minutes`) after writing a checkpoint: not a
    failure. The next run with the same params resumes from that checkpoint. Not a GdlError, so
    nothing that handles errors takes it for one."""

    def __init__(self, minutes: float, done: int, total: int, unit: str):
        self.minutes, self.done, self.total, self.unit = minutes, done, total, unit
        super().__init__(
            f"stopped at its budget of {minutes:g} min after {unit} {done} of {total} (checkpoint kept)"
        )

    def summary(self) -> dict[str, float | int | str]:
        return {"max_train_minutes": self.minutes, "done": self.done, "total": self.total, "unit": self.unit}

    @classmethod
    def from_summary(cls, stop: dict) -> BudgetReached:
        """The stop again from its `summary()` (a flow's result carries the summary, not the
        exception): one wording wherever a budget stop is told."""
        return cls(stop["max_train_minutes"], stop["done"], stop["total"], stop["unit"])
