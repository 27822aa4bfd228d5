"""The gallery: one static page across techniques and runs (latest per technique, history with
headline metrics and the parameters that differ, a metric trend, and run-against-run comparison).

Built from what every run directory already holds (manifest.json, metrics.json, params.json), so
it can be rebuilt at any time from `data/runs/` alone, or from a bucket, and published beside the
runs. Which metrics lead is each technique's declaration (`headline` in its manifest): nothing
here names a technique's metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from markupsafe import Markup

from models.core.files import is_safe_name
from models.reporting.quality import from_metrics, verdict
from models.reporting.report import PAGES, THUMBNAIL_FILE, line_png, png_data_uri

GALLERY = "index.html"
MAX_METRIC_COLUMNS = 5
MAX_PARAM_COLUMNS = 6


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
        try:
            params = json.loads(read(f"{technique}/{run_id}/params.json")).get("params", {})
        except (OSError, ValueError, AttributeError):
            params = {}
        headline = manifest.get("headline")
        files = manifest.get("files")
        found.setdefault(technique, []).append(
            {
                "run_id": run_id,
                "created_at": str(manifest.get("created_at", "")),
                "metrics": metrics,
                "quality": from_metrics(metrics),
                "thumbnail": isinstance(files, dict) and THUMBNAIL_FILE in files,
                "params": params if isinstance(params, dict) else {},
                "headline": [str(h) for h in headline] if isinstance(headline, list) else [],
            }
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_columns(runs: list[dict[str, Any]]) -> list[str]:
    """The technique's headline metrics (as its latest run declares them), then other numbers."""
    latest = runs[-1]
    headline = [m for m in latest["headline"] if any(m in r["metrics"] for r in runs)]
    numeric = [k for k, v in latest["metrics"].items() if _is_number(v) and k not in headline]
    return (headline + numeric)[:MAX_METRIC_COLUMNS]


def varying_params(runs: list[dict[str, Any]]) -> list[str]:
    """Parameters whose values differ between the runs (the ones worth a column)."""
    names = list(dict.fromkeys(k for r in runs for k in r["params"]))
    return [n for n in names if len({json.dumps(r["params"].get(n), sort_keys=True) for r in runs}) > 1]


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Run `a` against run `b`: the parameters that differ, and every metric with its change."""
    params = [
        {"parameter": k, a["run_id"]: a["params"].get(k, ""), b["run_id"]: b["params"].get(k, "")}
        for k in dict.fromkeys([*a["params"], *b["params"]])
        if a["params"].get(k) != b["params"].get(k)
    ]
    metrics = []
    for k in dict.fromkeys([*a["metrics"], *b["metrics"]]):
        va, vb = a["metrics"].get(k, ""), b["metrics"].get(k, "")
        row = {"metric": k, a["run_id"]: va, b["run_id"]: vb}
        if _is_number(va) and _is_number(vb):
            row["change"] = vb - va
        metrics.append(row)
    return {"params": params, "metrics": metrics}


def _trend(runs: list[dict[str, Any]], metric: str) -> bytes:
    values = [r["metrics"][metric] for r in runs if _is_number(r["metrics"].get(metric))]
    label = metric.replace("$", r"\$")  # names come from published runs: no mathtext
    return line_png({label: values}, "run", label, size=(5, 2.4))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a diverged run's metrics are shown as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _runs_json(runs: list[dict[str, Any]]) -> Markup:
    """The runs as JSON for the page's <script type='application/json'> element (the compare
    script reads it). Not HTML-escaped (the script reads its raw text), so no `<` at all
    (JSON's \\u003c), whatever the data holds: the HTML parser must never see `</script` or `<!--`."""
    text = json.dumps(_finite(runs), sort_keys=True, allow_nan=False).replace("<", "\\u003c")
    return Markup(text)


def render_gallery(runs_by_technique: dict[str, list[dict[str, Any]]]) -> str:
    techniques = []
    for technique, runs in sorted(runs_by_technique.items()):
        if not is_safe_name(technique):
            continue
        metrics = metric_columns(runs)
        latest = runs[-1]
        techniques.append(
            {
                "name": technique,
                "quality": latest.get("quality"),
                "verdict": verdict(technique, latest.get("quality")),
                "thumbnail": THUMBNAIL_FILE if latest.get("thumbnail") else None,
                "runs": runs,
                "metrics": metrics,
                "params": varying_params(runs)[:MAX_PARAM_COLUMNS],
                "trend": png_data_uri(_trend(runs, metrics[0])) if metrics and len(runs) > 1 else None,
                "diff": compare(runs[-2], runs[-1]) if len(runs) > 1 else None,
                "runs_json": _runs_json(runs) if len(runs) > 1 else None,
            }
        )
    return PAGES.get_template("gallery.html").render(techniques=techniques, no_runs=not runs_by_technique)
