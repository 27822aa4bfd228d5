"""The gallery: one static page across techniques and runs (latest per technique, history, trends).

Built from what every run directory already holds (manifest.json, metrics.json), so it can be
rebuilt at any time from `data/runs/` alone, and published beside the runs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from models.files import is_safe_name
from models.report import CSS, fmt, line_png, png_data_uri

GALLERY = "index.html"


def collect_runs(
    run_ids: Iterable[tuple[str, str]], read: Callable[[str], bytes]
) -> dict[str, list[dict[str, Any]]]:
    """Every finished run per technique, oldest first. `run_ids` are (technique, run id) pairs;
    `read("<technique>/<run_id>/<file>")` returns a file's bytes wherever the runs live."""
    found: dict[str, list[dict[str, Any]]] = {}
    for technique, run_id in run_ids:
        try:
            manifest = json.loads(read(f"{technique}/{run_id}/manifest.json"))
            metrics = json.loads(read(f"{technique}/{run_id}/metrics.json"))
        except (OSError, ValueError):
            continue  # a run being written right now, or damaged: not listed
        if not isinstance(manifest, dict) or not isinstance(metrics, dict):
            continue  # not a run of ours
        found.setdefault(technique, []).append(
            {"run_id": run_id, "created_at": manifest.get("created_at", ""), "metrics": metrics}
        )
    for runs in found.values():
        runs.sort(key=lambda r: r["created_at"])
    return found


def local_runs(runs_root: Path) -> dict[str, list[dict[str, Any]]]:
    """The runs in a folder laid out `<technique>/<run_id>/` (data/runs, or a publish folder)."""
    ids = [
        (p.parent.parent.name, p.parent.name)
        for p in sorted(runs_root.glob("*/*/manifest.json"))
        if is_safe_name(p.parent.parent.name) and is_safe_name(p.parent.name)
    ]
    return collect_runs(ids, lambda rel: (runs_root / rel).read_bytes())


def _trend(runs: list[dict[str, Any]], metric: str) -> bytes:
    values = [r["metrics"][metric] for r in runs if isinstance(r["metrics"].get(metric), int | float)]
    return line_png({metric: values}, "run", metric, size=(5, 2.4))


_PREFERRED = ("val_bits_per_char", "val_loss", "train_loss", "epochs")


def _trend_metric(runs: list[dict[str, Any]]) -> str | None:
    """The metric to chart: val_bits_per_char, val_loss or train_loss if present, else the first
    number."""
    latest = runs[-1]["metrics"]
    preferred = [k for k in _PREFERRED[:3] if k in latest]
    numeric = [k for k, v in latest.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    choices = preferred or numeric
    return choices[0] if choices else None


def render_gallery(runs_by_technique: dict[str, list[dict[str, Any]]]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>gdl gallery</title>",
        f"<style>{CSS}</style></head><body><h1>gdl gallery</h1>",
    ]
    if not runs_by_technique:
        parts.append("<p>No runs yet.</p>")
    for technique, runs in sorted(runs_by_technique.items()):
        latest = runs[-1]
        parts.append(
            f"<h2 id='{esc(technique)}'>{esc(technique)}</h2><p>Latest: "
            f"<a href='{esc(technique)}/{esc(latest['run_id'])}/report.html'>"
            f"{esc(latest['run_id'])}</a> ({esc(latest['created_at'])})</p>"
        )
        metric = _trend_metric(runs)
        if metric and len(runs) > 1:
            parts.append(f"<img alt='{esc(metric)} per run' src='{png_data_uri(_trend(runs, metric))}'>")
        shown = [k for k, v in latest["metrics"].items() if not isinstance(v, dict)]
        keys = sorted(shown, key=lambda k: _PREFERRED.index(k) if k in _PREFERRED else len(_PREFERRED))[:6]
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        rows = []
        for r in reversed(runs):
            cells = "".join(f"<td>{esc(fmt(r['metrics'].get(k, '')))}</td>" for k in keys)
            link = f"<a href='{esc(technique)}/{esc(r['run_id'])}/report.html'>{esc(r['run_id'])}</a>"
            rows.append(f"<tr><td>{link}</td><td>{esc(r['created_at'])}</td>{cells}</tr>")
        parts.append(f"<table><tr><th>run</th><th>created</th>{head}</tr>{''.join(rows)}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
