"""The gallery: one static page across techniques and runs (latest per technique, history with
headline metrics and the parameters that differ, a metric trend, and run-against-run comparison).

Built from what every run directory already holds (manifest.json, metrics.json, params.json), so
it can be rebuilt at any time from `data/runs/` alone, or from a bucket, and published beside the
runs. Which metrics lead is each technique's declaration (`headline` in its manifest): nothing
here names a technique's metric.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from models.core.files import is_safe_name
from models.reporting.report import CSS, fmt, line_png, png_data_uri

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
        found.setdefault(technique, []).append(
            {
                "run_id": run_id,
                "created_at": str(manifest.get("created_at", "")),
                "metrics": metrics,
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


def _rows_html(rows: list[dict[str, Any]]) -> str:
    esc = html.escape
    if not rows:
        return "<p class='muted'>no differences</p>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# Run-against-run comparison of any two runs, in the page itself (no server, no network).
_COMPARE_JS = """
function gdlCompare(t){
  const runs=JSON.parse(document.getElementById('runs-'+t).textContent);
  const a=runs[document.getElementById('a-'+t).value], b=runs[document.getElementById('b-'+t).value];
  const out=document.getElementById('cmp-'+t); out.replaceChildren();
  const table=(title,rows,cols)=>{const h=document.createElement('h4');h.textContent=title;out.append(h);
    const tb=document.createElement('table');const tr=tb.insertRow();
    cols.forEach(c=>{const th=document.createElement('th');th.textContent=c;tr.append(th);});
    rows.forEach(r=>{const row=tb.insertRow();r.forEach(v=>{row.insertCell().textContent=v;});});
    out.append(tb);};
  const show=v=>v===undefined?'':(typeof v==='number'?(+v.toPrecision(4)).toString():JSON.stringify(v));
  const keys=o=>Object.keys(o||{});
  const pk=[...new Set([...keys(a.params),...keys(b.params)])]
    .filter(k=>JSON.stringify(a.params[k])!==JSON.stringify(b.params[k]));
  table('Parameters that differ',pk.map(k=>[k,show(a.params[k]),show(b.params[k])]),
    ['parameter',a.run_id,b.run_id]);
  const mk=[...new Set([...keys(a.metrics),...keys(b.metrics)])];
  table('Metrics',mk.map(k=>{const x=a.metrics[k],y=b.metrics[k];
    return [k,show(x),show(y),(typeof x==='number'&&typeof y==='number')?show(y-x):''];}),
    ['metric',a.run_id,b.run_id,'change']);
}
"""


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a diverged run's metrics are shown as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_script(element_id: str, data: Any) -> str:
    # No `<` at all inside the <script> element (JSON's \u003c), whatever the data holds: the
    # HTML parser must never see `</script` or `<!--` there.
    text = json.dumps(_finite(data), sort_keys=True, allow_nan=False).replace("<", "\\u003c")
    return f"<script type='application/json' id='{html.escape(element_id)}'>{text}</script>"


def _comparison(technique: str, runs: list[dict[str, Any]]) -> str:
    esc = html.escape
    if len(runs) < 2:
        return ""
    previous, latest = runs[-2], runs[-1]
    diff = compare(previous, latest)
    options = "".join(
        f"<option value='{i}'>{esc(r['run_id'])} ({esc(r['created_at'])})</option>"
        for i, r in enumerate(runs)
    )
    slug = esc(technique)
    return (
        f"<details open><summary>Latest run against the previous one</summary>"
        f"<h4>Parameters that differ</h4>{_rows_html(diff['params'])}"
        f"<h4>Metrics</h4>{_rows_html(diff['metrics'])}</details>"
        f"<details><summary>Compare any two runs</summary>"
        f"{_json_script('runs-' + technique, runs)}"
        f"<p><select id='a-{slug}'>{options}</select> against <select id='b-{slug}'>{options}</select> "
        f"<button type='button' onclick=\"gdlCompare('{slug}')\">compare</button></p>"
        f"<div id='cmp-{slug}'></div></details>"
    )


def render_gallery(runs_by_technique: dict[str, list[dict[str, Any]]]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>gdl gallery</title>",
        f"<style>{CSS}</style><script>{_COMPARE_JS}</script></head><body><h1>gdl gallery</h1>",
    ]
    if not runs_by_technique:
        parts.append("<p>No runs yet.</p>")
    for technique, runs in sorted(runs_by_technique.items()):
        if not is_safe_name(technique):
            continue
        latest = runs[-1]
        parts.append(
            f"<h2 id='{esc(technique)}'>{esc(technique)}</h2><p>Latest: "
            f"<a href='{esc(technique)}/{esc(latest['run_id'])}/report.html'>"
            f"{esc(latest['run_id'])}</a> ({esc(latest['created_at'])})</p>"
        )
        metrics = metric_columns(runs)
        if metrics and len(runs) > 1:
            parts.append(
                f"<img alt='{esc(metrics[0])} per run' src='{png_data_uri(_trend(runs, metrics[0]))}'>"
            )
        params = varying_params(runs)[:MAX_PARAM_COLUMNS]
        head = "".join(f"<th>{esc(k)}</th>" for k in metrics) + "".join(
            f"<th class='muted'>{esc(k)}</th>" for k in params
        )
        rows = []
        for r in reversed(runs):
            cells = "".join(f"<td>{esc(fmt(r['metrics'].get(k, '')))}</td>" for k in metrics)
            cells += "".join(f"<td>{esc(fmt(r['params'].get(k, '')))}</td>" for k in params)
            link = f"<a href='{esc(technique)}/{esc(r['run_id'])}/report.html'>{esc(r['run_id'])}</a>"
            rows.append(f"<tr><td>{link}</td><td>{esc(r['created_at'])}</td>{cells}</tr>")
        parts.append(f"<table><tr><th>run</th><th>created</th>{head}</tr>{''.join(rows)}</table>")
        parts.append(_comparison(technique, runs))
    parts.append("</body></html>")
    return "\n".join(parts)
