"""Self-contained HTML reports and the plots in them (images inlined as data: URIs)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Report:
    """What a technique shows about a run; `render_html` turns it into one page."""

    title: str
    notes: list[str] = field(default_factory=list)  # plain statements (e.g. fallbacks used)
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch curves
    images: list[tuple[str, str, bytes]] = field(default_factory=list)  # (caption, file, PNG)
    texts: list[tuple[str, str, str]] = field(default_factory=list)  # (caption, prefix, text)


def line_png(
    series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, size: tuple[float, float] = (6, 3.5)
) -> bytes:
    """One line per series, x = 1..n; PNG bytes (no timestamp metadata, so reproducible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=size, dpi=100)
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and runs are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def curves_png(history: Mapping[str, Sequence[float]], keys: Sequence[str], ylabel: str) -> bytes:
    """Per-epoch curves of the `keys` present in `history`."""
    return line_png({k: history[k] for k in keys if k in history}, "epoch", ylabel)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.75rem;border-radius:4px}
.seed{color:#888} .note{background:#fff6d5;padding:.5rem .75rem;border-left:4px solid #e0b000}
img{max-width:100%}
"""


def render_html(report: Report) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    parts += [f"<p class='note'>{esc(note)}</p>" for note in report.notes]
    if report.metrics:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in report.metrics.items())
        parts.append(f"<h2>Metrics</h2><table>{rows}</table>")
    for caption, _name, png in report.images:
        uri = png_data_uri(png)
        parts.append(f"<h2>{esc(caption)}</h2><img alt='{esc(caption)}' src='{uri}'>")
    for caption, prefix, text in report.texts:
        parts.append(f"<h2>{esc(caption)}</h2><pre><span class='seed'>{esc(prefix)}</span>{esc(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
