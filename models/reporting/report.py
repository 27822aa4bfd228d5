"""Run reports as typed sections, rendered to a self-contained page and to Prefect artifacts.

A technique's `report` step returns a `Report`: a title, its metrics, and a list of sections
(text samples, images, image grids, animations, curves with a named x-axis, tables, notes). It
never writes HTML or artifact code: `render_html` makes `report.html` (images inlined as data:
URIs) and `artifact_plan` says which Prefect artifacts to create (tasks/publish creates them).
Every page also gets a provenance block the technique does not write either: the resolved
hyperparameters, the code version, when each step ran and for how long, and which data and
weights were used.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from models.core.errors import GdlError
from models.core.files import safe_name
from models.reporting.quality import Quality

THUMBNAIL = 480  # longest side of an image inlined in a Prefect artifact


@dataclass(frozen=True)
class Text:
    """A generated text; `prefix` (the seed) is shown greyed before it."""

    caption: str
    text: str
    prefix: str = ""
    name: str = ""  # artifact key suffix (default: from the caption)


@dataclass(frozen=True)
class Image:
    caption: str
    file: str  # PNG written into the run directory
    image: np.ndarray  # uint8, (H, W) or (H, W, 3)


@dataclass(frozen=True)
class Grid:
    caption: str
    file: str
    images: Sequence[np.ndarray]
    captions: Sequence[str] | None = None
    cols: int | None = None


@dataclass(frozen=True)
class Animation:
    """A sequence (octaves, training progress, an interpolation) as a GIF and a strip."""

    caption: str
    file: str  # .gif
    frames: Sequence[np.ndarray]
    captions: Sequence[str] | None = None
    duration_ms: int = 400


@dataclass(frozen=True)
class Curve:
    caption: str
    file: str
    series: Mapping[str, Sequence[float]]
    x: str  # the x axis' label: "epoch", "step", "iteration", "epsilon (input space)"...
    y: str
    x_values: Sequence[float] | None = None  # default 1..n
    log_y: bool = False


@dataclass(frozen=True)
class Table:
    caption: str
    rows: Sequence[Mapping[str, Any]]
    name: str = ""


@dataclass(frozen=True)
class Note:
    text: str


Section = Text | Image | Grid | Animation | Curve | Table | Note


@dataclass
class Report:
    """What a technique shows about a run."""

    title: str
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)  # one row per Technique.history_x
    weights: str | None = None  # the pretrained weights used, in words (None: no network weights)
    # The headline metric against its reference points (models/reporting/quality.py): leads the
    # page, goes into metrics.json as `quality`, and the gallery's score column.
    quality: Quality | None = None
    # The run's main image (a section's file): the gallery's thumbnail (default: the first image).
    main_image: str | None = None

    def main_file(self) -> str | None:
        """The file name of the image that stands for the run (None: a report without images)."""
        if self.main_image:
            return self.main_image
        for kinds in (Image | Grid, Animation | Curve):  # a picture of the result, else a chart
            for section in self.sections:
                if isinstance(section, kinds):
                    return section.file
        return None


@dataclass(frozen=True)
class Provenance:
    """What every report shows besides the technique's sections (made by the publish step)."""

    technique: str
    run_id: str
    created_at: str
    params: Mapping[str, Any]
    git: str
    steps: Sequence[Mapping[str, Any]]  # step, started_at, seconds, git, code
    inputs: Sequence[Mapping[str, Any]]  # name, dataset, source, location, sha256


# ---------------------------------------------------------------------------------------------
# Files of sections


def line_png(
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    size: tuple[float, float] = (6, 3.5),
    x_values: Sequence[float] | None = None,
    log_y: bool = False,
) -> bytes:
    """One line per series (x = 1..n unless given); PNG bytes without timestamps (reproducible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=size, dpi=100)
    for label, values in series.items():
        xs = list(x_values)[: len(values)] if x_values is not None else range(1, len(values) + 1)
        ax.plot(xs, values, marker="o" if len(values) <= 40 else None, label=label)
    if x_values is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps and runs are whole
    if log_y:
        ax.set_yscale("log")
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


def section_files(section: Section) -> dict[str, bytes]:
    """The files a section puts in the run directory (file name -> bytes)."""
    from models.core import images

    if isinstance(section, Image):
        return {section.file: images.png_bytes(section.image)}
    if isinstance(section, Grid):
        return {
            section.file: images.png_bytes(images.image_grid(section.images, section.captions, section.cols))
        }
    if isinstance(section, Animation):
        return {
            section.file: images.animation_gif(section.frames, section.duration_ms, captions=section.captions)
        }
    if isinstance(section, Curve):
        return {
            section.file: line_png(
                section.series, section.x, section.y, x_values=section.x_values, log_y=section.log_y
            )
        }
    return {}


def report_files(report: Report) -> dict[str, bytes]:
    """Every file the report's sections write, checked: safe, unique names."""
    files: dict[str, bytes] = {}
    for section in report.sections:
        for name, data in section_files(section).items():
            safe_name(name, "report file name")
            if name in files or name in RESERVED:
                raise GdlError(f"report of {report.title!r}: file name {name!r} used twice")
            files[name] = data
    return files


THUMBNAIL_FILE = "thumbnail.png"  # the gallery's small picture of a run (its main image)
RESERVED = {"params.json", "metrics.json", "history.csv", "report.html", "manifest.json", THUMBNAIL_FILE}
GALLERY_THUMBNAIL = 160  # longest side of the gallery's thumbnail


def thumbnail_png(report: Report, files: Mapping[str, bytes]) -> bytes | None:
    """The run's main image, shrunk for the gallery (None when the report has no image)."""
    name = report.main_file()
    if name is None or name not in files:
        return None
    return _small_png(files[name], GALLERY_THUMBNAIL)


def history_csv(history: Mapping[str, Sequence[float]], x: str) -> bytes:
    import csv

    buf = io.StringIO()
    keys = list(history)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([x, *keys])
    for i in range(max((len(v) for v in history.values()), default=0)):
        writer.writerow([i + 1, *(history[k][i] if i < len(history[k]) else "" for k in keys)])
    return buf.getvalue().encode()


# ---------------------------------------------------------------------------------------------
# HTML


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_data_uri(data: bytes) -> str:
    return data_uri(data)


def _mime(name: str) -> str:
    return "image/gif" if name.endswith(".gif") else "image/png"


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A table's columns: every key of its rows, in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


# The pages are Jinja2 templates (templates/*.html). Autoescaping escapes every value a page
# shows (titles, notes, run names, parameters, metric names): nothing is escaped by hand here,
# and only markup this package builds itself may be passed in as `Markup`.
TEMPLATES = Path(__file__).with_name("templates")
"""The page templates: publishing's code as much as this module (its code version and DVC deps
include them, so editing a template re-publishes and nothing else)."""

PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("models.reporting", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
PAGES.filters["fmt"] = fmt
PAGES.globals["columns"] = _columns
PAGES.tests.update(
    note_section=lambda s: isinstance(s, Note),
    text_section=lambda s: isinstance(s, Text),
    table_section=lambda s: isinstance(s, Table),
)


def provenance_rows(report: Report, prov: Provenance) -> dict[str, list[dict[str, Any]]]:
    """The provenance block as tables (for the page and the summary artifact)."""
    run = [
        {"": "run", "value": f"{prov.technique} / {prov.run_id}"},
        {"": "published", "value": prov.created_at},
        {"": "code", "value": prov.git},
        {"": "weights", "value": report.weights or "no pretrained weights"},
    ]
    total = sum(float(s.get("seconds") or 0) for s in prov.steps)
    run.append({"": "compute time", "value": f"{total:.1f} s over {len(prov.steps)} steps"})
    return {
        "Run": run,
        "Steps": [dict(s) for s in prov.steps],
        "Data": [dict(i) for i in prov.inputs] or [{"input": "none"}],
        "Hyperparameters": [{"parameter": k, "value": v} for k, v in prov.params.items()],
    }


def render_html(report: Report, prov: Provenance, files: Mapping[str, bytes] | None = None) -> str:
    files = report_files(report) if files is None else files
    return PAGES.get_template("report.html").render(
        report=report,
        prov=prov,
        sources={name: data_uri(data, _mime(name)) for name, data in files.items()},
        provenance=provenance_rows(report, prov),
    )


# ---------------------------------------------------------------------------------------------
# Prefect artifacts (described here, created by tasks/publish)


def _fenced(text: str) -> str:
    """A code block no generated text can close early (the fence outlasts any run of backticks)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _md(text: str) -> str:
    """Text shown as Markdown without being read as Markdown (links, images, emphasis)."""
    return re.sub(r"([\\`*_\[\]()<>!#|])", r"\\\1", text)


def slug(text: str) -> str:
    """A Prefect artifact key fragment: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


def _small_png(data: bytes, side: int) -> bytes:
    """An image file's (first) frame as a PNG whose longest side is at most `side`."""
    from PIL import Image as PILImage

    from models.core import images

    with PILImage.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"))
    if max(array.shape[:2]) > side:
        array = images.resize(array, max_side=side)
    return images.png_bytes(array)


def _thumbnail(name: str, data: bytes) -> tuple[bytes, str]:
    """A small PNG for the UI (artifacts live in Prefect's database), or a GIF as it is."""
    if name.endswith(".gif"):
        return data, "image/gif"
    return _small_png(data, THUMBNAIL), "image/png"


def _quality_md(report: Report) -> str:
    q = report.quality
    if q is None:
        return ""
    flag = "" if q.passed else " **Below the demo's floor.**"
    return f"**Quality**: {_md(q.sentence())}.{flag}\n\n"


def artifact_plan(report: Report, prov: Provenance, files: Mapping[str, bytes], where: str) -> list[dict]:
    """The artifacts a run shows in the Prefect UI: a summary (metrics, notes, provenance, where
    it was published), a table per text sample and per table section, and each image inline.
    Each item: {"kind": "markdown"|"table", "key": suffix, "description", "content"}."""
    metrics = "\n".join(f"| {k} | {fmt(v)} |" for k, v in report.metrics.items())
    notes = "\n".join(f"> {s.text}" for s in report.sections if isinstance(s, Note))
    excerpts = "\n\n".join(
        f"**{_md(s.caption)}**\n\n{_fenced(s.text[:400])}" for s in report.sections if isinstance(s, Text)
    )
    prov_md = "\n\n".join(
        f"**{caption}**\n\n"
        + "\n".join(
            f"- {', '.join(f'{k}: {fmt(v)}' if k else fmt(v) for k, v in row.items())}" for row in rows
        )
        for caption, rows in provenance_rows(report, prov).items()
        if caption != "Hyperparameters"
    )
    params = ", ".join(f"`{k}={fmt(v)}`" for k, v in prov.params.items())
    plan = [
        {
            "kind": "markdown",
            "key": "summary",
            "description": f"{prov.technique} run summary",
            "content": f"# {report.title}\n\n{_quality_md(report)}{notes}\n\n{where}\n\n"
            f"| metric | value |\n|---|---|\n{metrics}\n\n"
            f"{excerpts}\n\n{prov_md}\n\n**Hyperparameters**: {params}\n",
        }
    ]
    used = {"summary", "error", "training"}
    for section in report.sections:
        if isinstance(section, Text):
            key = slug(section.name or section.caption)
            rows = [{"line": 0, "text": f"[seed] {section.prefix}"}] + [
                {"line": n + 1, "text": line} for n, line in enumerate(section.text.splitlines())
            ]
            plan.append({"kind": "table", "key": key, "description": section.caption, "content": rows})
        elif isinstance(section, Table):
            key = slug(section.name or section.caption)
            plan.append(
                {"kind": "table", "key": key, "description": section.caption, "content": list(section.rows)}
            )
        elif not isinstance(section, Note):
            key = slug(section.file.rsplit(".", 1)[0])
            data, mime = _thumbnail(section.file, files[section.file])
            plan.append(
                {
                    "kind": "markdown",
                    "key": key,
                    "description": section.caption,
                    "content": f"## {section.caption}\n\n![{section.caption}]({data_uri(data, mime)})",
                }
            )
        else:
            continue
        # Keys name artifacts in the UI: a second section with the same slug gets a suffix.
        base, n = plan[-1]["key"], 2
        while plan[-1]["key"] in used:
            plan[-1]["key"], n = f"{base}-{n}", n + 1
        used.add(plan[-1]["key"])
    return plan
