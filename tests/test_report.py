"""Reports as typed sections (page and artifacts from one description) and the gallery."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image as PILImage

from models.core.errors import GdlError
from models.reporting.gallery import compare, render_gallery
from models.reporting.report import (
    THUMBNAIL,
    Animation,
    Curve,
    Grid,
    Image,
    Note,
    Provenance,
    Report,
    Table,
    Text,
    artifact_plan,
    render_html,
    report_files,
)

RNG = np.random.default_rng(0)


def picture(h=40, w=60) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


PROV = Provenance(
    technique="demo_tech",
    run_id="abc123",
    created_at="2026-11-23T10:00:00+00:00",
    params={"epochs": 3, "source": "offline"},
    git="0123456789ab",
    steps=[{"step": "train", "started_at": "2026-11-23T09:00:00+00:00", "seconds": 12.5, "code": "0123"}],
    inputs=[{"input": "photo", "dataset": "chelsea", "source": "offline stand-in", "sha256": "f" * 64}],
)


def every_section() -> Report:
    return Report(
        title="a <b>title</b>",
        metrics={"loss": 0.25},
        sections=[
            Note("fell back to <offline> data"),
            Text("Temperature 0.5", "generated text", prefix="seed ", name="temperature-0.5"),
            Image("Big photo", "big.png", picture(900, 1200)),
            Grid("Grid", "grid.png", [picture(), picture(20, 20)], ["a", "b"]),
            Animation("Octaves", "octaves.gif", [picture(), picture()], ["1", "2"]),
            Curve("Loss", "loss.png", {"loss": [3.0, 2.0, 1.5]}, x="iteration", y="loss"),
            Table("Per epoch", [{"epoch": 1, "text": "x"}, {"epoch": 2, "text": "y"}]),
        ],
        weights="ImageNet MobileNetV2 (test)",
    )


def test_one_description_renders_the_page_with_every_section_and_provenance():
    report = every_section()
    files = report_files(report)
    assert set(files) == {"big.png", "grid.png", "octaves.gif", "loss.png"}
    with PILImage.open(io.BytesIO(files["octaves.gif"])) as gif:
        assert gif.n_frames == 2
    html = render_html(report, PROV, files)
    assert "a &lt;b&gt;title&lt;/b&gt;" in html and "<b>title</b>" not in html  # escaped
    assert html.count("data:image/png;base64,") == 3 and html.count("data:image/gif;base64,") == 1
    assert "<span class='seed'>seed </span>generated text" in html
    assert "fell back to &lt;offline&gt; data" in html
    for fact in ("0123456789ab", "f" * 64, "chelsea", "12.5", "ImageNet MobileNetV2 (test)", "epochs"):
        assert fact in html, fact
    assert "src='http" not in html  # self-contained


def test_artifacts_name_samples_and_keep_inline_images_small():
    report = every_section()
    plan = artifact_plan(report, PROV, report_files(report), "published somewhere")
    keys = [item["key"] for item in plan]
    assert keys[0] == "summary" and "temperature-0-5" in keys and "per-epoch" in keys
    assert {"big", "grid", "octaves", "loss"} <= set(keys)
    summary = plan[0]["content"]
    assert "published somewhere" in summary and "0123456789ab" in summary and "chelsea" in summary
    big = next(item for item in plan if item["key"] == "big")["content"]
    data = re.search(r"base64,([A-Za-z0-9+/=]+)", big).group(1)
    import base64

    with PILImage.open(io.BytesIO(base64.b64decode(data))) as thumb:
        assert max(thumb.size) <= THUMBNAIL


@pytest.mark.parametrize(
    "sections",
    [
        [Image("a", "x.png", picture()), Grid("b", "x.png", [picture()])],  # one file twice
        [Image("a", "../x.png", picture())],  # not a plain file name
        [Image("a", "report.html", picture())],  # would overwrite the page
    ],
)
def test_bad_section_files_are_refused(sections):
    with pytest.raises(GdlError):
        report_files(Report("t", sections=sections))


def test_sections_with_one_slug_get_distinct_artifact_keys():
    report = Report("t", sections=[Text("Sample", "a"), Text("sample", "b"), Table("Summary", [{"a": 1}])])
    keys = [item["key"] for item in artifact_plan(report, PROV, {}, "")]
    assert keys == ["summary", "sample", "sample-2", "summary-2"]


def _run(run_id, created, metrics, params, headline=("score",)):
    return {
        "run_id": run_id,
        "created_at": created,
        "metrics": metrics,
        "params": params,
        "headline": list(headline),
    }


def test_gallery_leads_with_declared_headline_metrics_and_differing_params():
    runs = {
        "tech": [
            _run("r1", "2026-01-01", {"aaa": 1, "score": 0.5}, {"lr": 0.1, "epochs": 3}),
            _run("r2", "2026-01-02", {"aaa": 2, "score": 0.4}, {"lr": 0.01, "epochs": 3}),
        ]
    }
    page = render_gallery(runs)
    header = page[page.index("<table>") : page.index("</tr>", page.index("<table>"))]
    assert header.index("score") < header.index("aaa")  # declared headline first, not alphabetical
    assert "lr" in header and "epochs" not in header  # only parameters that differ get a column
    assert "score per run" in page  # the trend charts the first headline metric


def test_comparison_lists_changed_params_and_metric_changes():
    a = _run("r1", "t1", {"score": 0.5, "device": "cpu"}, {"lr": 0.1, "epochs": 3})
    b = _run("r2", "t2", {"score": 0.25, "device": "cpu"}, {"lr": 0.01, "epochs": 3})
    diff = compare(a, b)
    assert diff["params"] == [{"parameter": "lr", "r1": 0.1, "r2": 0.01}]
    score = next(m for m in diff["metrics"] if m["metric"] == "score")
    assert score["change"] == pytest.approx(-0.25)
    page = render_gallery({"tech": [a, b]})
    assert "Latest run against the previous one" in page and "Compare any two runs" in page


def test_gallery_data_cannot_break_out_of_its_script_element():
    evil = _run("r2", "t2", {"score": 1}, {"note": "</script><script>alert(1)</script>"})
    page = render_gallery({"tech": [_run("r1", "t1", {"score": 0}, {}), evil]})
    embedded = page[page.index("id='runs-tech'>") :]
    embedded = embedded[: embedded.index("</script>")]
    assert "<script>alert(1)" not in embedded
    runs = json.loads(embedded[len("id='runs-tech'>") :])
    assert runs[1]["params"]["note"] == "</script><script>alert(1)</script>"


def test_generated_text_cannot_inject_markdown_into_the_summary():
    evil = "````\n![x](http://attacker/pixel.png)\n````"
    report = Report("t", sections=[Text("[click](http://attacker)", evil)])
    summary = artifact_plan(report, PROV, {}, "")[0]["content"]
    block = summary[summary.index("`````") :]
    assert block.startswith("`````\n" + evil + "\n`````")  # the fence outlasts the text's own
    assert "\\[click\\]\\(http://attacker\\)" in summary


def test_gallery_survives_odd_metric_names_and_non_finite_values():
    runs = {
        "tech": [
            _run("r1", "t1", {"cost $x$": 1.0}, {}, headline=("cost $x$",)),
            _run("r2", "t2", {"cost $x$": float("nan")}, {"lr": 1}, headline=("cost $x$",)),
            _run("r3", "t3", {"cost $x$": 0.5}, {"lr": 2}, headline=("cost $x$",)),
        ]
    }
    page = render_gallery(runs)
    embedded = page[page.index("id='runs-tech'>") + len("id='runs-tech'>") :]
    runs_json = json.loads(embedded[: embedded.index("</script>")])  # strict JSON: no NaN
    assert runs_json[1]["metrics"]["cost $x$"] == "nan"


def test_user_text_is_escaped_by_the_page_templates():
    evil = "<script>alert(1)</script>"
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    prov = Provenance("demo_tech", evil, "t", {"note": evil}, "g", [], [])
    report = Report(evil, metrics={evil: evil}, sections=[Note(evil), Table(evil, [{evil: evil}])])
    page = render_html(report, prov, {})
    assert evil not in page and page.count(escaped) >= 7  # title x2, run, metric, note, table, param
    runs = {
        "tech": [
            _run(evil, "t1", {"score": 0, evil: 1}, {"p": evil}),
            _run("r2", evil, {"score": 1, evil: 2}, {"p": 1}),
        ]
    }
    gallery = render_gallery(runs)
    assert "<script>alert" not in gallery  # nowhere, not even in the embedded JSON (\u003c)
    assert f"<a href='tech/{escaped}/report.html'>{escaped}</a>" in gallery  # the run name
    assert f"<td>{escaped}</td>" in gallery  # the parameter value
    assert f"<option value='0'>{escaped} (t1)</option>" in gallery
