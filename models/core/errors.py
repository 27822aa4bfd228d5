"""The errors every layer raises, and how their messages are shown: on one line."""

from __future__ import annotations


class GdlError(Exception):
    """An error the user can act on; the CLI prints its message as one line."""


class RetryableError(GdlError):
    """A failure that may pass on a later try (network trouble), unlike a bad input."""


def one_line(text: object) -> str:
    """An exception's message on one line (some span several: urllib's redirect loop)."""
    return " ".join(str(text).split())
