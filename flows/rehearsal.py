"""The rehearsal (`gdl run <technique|all> --profile full --rehearse`): a profile's real data,
shapes and networks with its counts capped, and one table row per technique saying what was found
and how long the uncapped run would take.

Like PyTorch Lightning's `fast_dev_run`, it runs every step that can fail on the real thing (the
downloads and their checks, archive layouts, weights files, the networks at the books' sizes,
memory at full resolution) in a minute or two per technique, before a night of training does.

Where its outputs go: every slot's key holds the params, and the rehearsal's are capped, so none
of its vectorize, train or sample slots is one a real run uses; it never publishes (no report
upload, no `latest.json`). Its downloads are the real ones and are kept on purpose: the real run
then starts from data that has already passed its checks.

Projection: the train step notes when training progress was reported (tasks.steps.Pace). From
the first report (after the first update, which carries building the networks and the first
trace) to the last, it gives seconds per unit of reported work; the technique's
`Rehearsal.updates` turns that into seconds per training update, and the uncapped run's updates
into its projected training time on this machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flows.config import resolve_params
from models.core.errors import one_line
from models.core.registry import get
from tasks.steps import Manifest, input_paths, project_root

# The last nightly rehearsal of this process: its rows and its failures (for `gdl run all
# --rehearse`, which prints the table even when a technique failed and the flow did too).
LAST_RUN: dict[str, Any] = {"rows": [], "failed": {}}


def seconds_per_update(
    technique: str, params: Mapping[str, Any], raw: Manifest, model: Manifest
) -> float | None:
    """Measured seconds per training update of the (capped) run, or None when training made
    fewer than two progress reports after its first update."""
    t = get(technique)
    pace = model.get("pace")
    if not pace:
        return None
    p = t.params_model(**params)
    updates = t.rehearsal.updates(p, input_paths(project_root(), {"download": raw}))
    units = pace["done_to"] - pace["done_from"]
    per_unit = updates / max(pace["total"], 1)
    if units <= 0 or per_unit <= 0:
        return None
    return pace["seconds"] / (units * per_unit)


def rehearsal_row(
    technique: str,
    profile: str,
    overrides: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    upstream: Mapping[str, Manifest],
) -> dict[str, Any]:
    """One technique's row: data found, batch shape, parameters, seconds per update, projection."""
    t = get(technique)
    raw, model = upstream["download"], upstream["train"]
    full = t.params_model(**resolve_params(technique, profile, overrides))
    inputs = input_paths(project_root(), {"download": raw})
    full_updates = t.rehearsal.updates(full, inputs)
    per_update = seconds_per_update(technique, params, raw, model)
    summary = model.get("summary") or {}
    return {
        "technique": technique,
        "data": {
            name: {"dataset": e["dataset"], "sha256": e["sha256"], "location": e["location"]}
            for name, e in raw["inputs"].items()
        },
        "input_shape": summary.get("input_shape"),
        "parameters": summary.get("parameters"),
        "unit": t.rehearsal.unit,
        "seconds_per_update": per_update,
        "rehearsed_updates": t.rehearsal.updates(t.params_model(**params), inputs),
        "full_updates": full_updates,
        "projected_train_seconds": per_update * full_updates if per_update is not None else None,
        "train_seconds": model.get("seconds"),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _shape(shape: Sequence[int] | None) -> str:
    return "x".join(map(str, shape)) if shape else "?"


def render_table(rows: Sequence[Mapping[str, Any]], failed: Mapping[str, str] | None = None) -> str:
    """The rehearsal's Markdown table (the CLI prints it; the flow makes it an artifact)."""
    lines = [
        "| technique | data (sha256) | batch shape | parameters | s per update | full run: updates "
        "| projected training (this machine) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        data = "; ".join(f"{d['dataset']} `{d['sha256'][:12]}`" for d in row["data"].values()) or "none"
        per = row["seconds_per_update"]
        params = row["parameters"]
        lines.append(
            f"| `{row['technique']}` | {data} | {_shape(row['input_shape'])} "
            f"| {f'{params:,}' if params is not None else '?'} "
            f"| {f'{per:.3g}' if per is not None else 'not measured'} "
            f"| {row['full_updates']:,} {row['unit']}s | {_duration(row['projected_train_seconds'])} |"
        )
    for name, reason in (failed or {}).items():
        reason = one_line(reason).replace("|", "\\|")
        lines.append(f"| `{name}` | FAILED: {reason} | | | | | |")
    return "\n".join(lines) + "\n"
