"""The nightly's summary: one row per technique (its state, how long it took, its quality against
the demo's floor, where its report is), as a table for the Prefect UI and the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.core.errors import BudgetReached
from models.reporting.quality import from_metrics, verdict

COMPLETED, INCOMPLETE, FAILED = "completed", "incomplete", "failed"


def summary_row(
    technique: str, seconds: float, result: Mapping[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    """A technique's row: `result` is what its flow returned (a published run, or a train step
    stopped at its budget), `error` the one-line reason it failed."""
    row: dict[str, Any] = {"technique": technique, "seconds": round(seconds, 1)}
    if error is not None or result is None:
        return {**row, "state": FAILED, "detail": error or "no result"}
    if "incomplete" in result:
        stop = result["incomplete"]
        if stop:
            detail = f"{BudgetReached.from_summary(stop)}; resumes next run"
        else:  # only the run's state was readable
            detail = str(result.get("message") or "stopped at its budget; resumes next run")
        return {**row, "state": INCOMPLETE, "detail": detail}
    record = from_metrics({"quality": result.get("quality")})
    quality = verdict(technique, record)
    if record is not None and record.get("score") is not None:
        quality += f" (score {record['score']:.2f})"
    return {
        **row,
        "state": COMPLETED,
        "quality": quality,
        "report": result.get("published") or result.get("report", ""),
        "detail": "",
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: a count per state, then the table."""
    counts = {s: sum(r["state"] == s for r in rows) for s in (COMPLETED, INCOMPLETE, FAILED)}
    lines = [
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        "",
        "| technique | state | duration | quality | report | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = [
            f"`{r['technique']}`",
            r["state"],
            _duration(r["seconds"]),
            r.get("quality", ""),
            r.get("report", ""),
            r.get("detail", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
