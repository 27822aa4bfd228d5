"""The errors every layer raises, and how their messages are shown: on one line."""

from __future__ import annotations


class GdlError(Exception):
    """An error the user can act on; the CLI prints its message as one line."""


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
