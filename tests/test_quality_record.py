"""The quality record: a run's headline metric between its untrained and reference points."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape

from models.reporting.quality import Check, Quality, verdict


def test_score_is_zero_at_untrained_one_at_reference_for_a_higher_is_better_metric():
    q = Quality("legible_fraction", value=0.6, untrained=0.0, reference=0.8, floor=0.5)
    assert q.score == pytest.approx(0.75)
    assert Quality("m", value=0.0, untrained=0.0, reference=0.8).score == 0.0
    assert Quality("m", value=0.8, untrained=0.0, reference=0.8).score == 1.0
    assert q.passed


def test_score_handles_a_lower_is_better_metric_by_direction():
    # FID 14.2 from an untrained 61.0 towards real data's 3.1: (61 - 14.2) / (61 - 3.1) = 0.808
    q = Quality("fid", value=14.2, untrained=61.0, reference=3.1, floor=0.6, higher_is_better=False)
    assert q.score == pytest.approx((61.0 - 14.2) / (61.0 - 3.1))
    assert q.passed
    worse = Quality("fid", value=70.0, untrained=61.0, reference=3.1, floor=0.6, higher_is_better=False)
    assert worse.score < 0 and not worse.passed


def test_a_floor_on_the_metric_becomes_the_same_floor_on_the_score():
    q = Quality("ssim", value=0.74, untrained=0.1, reference=1.0, value_floor=0.75)
    assert q.floor == pytest.approx((0.75 - 0.1) / 0.9)
    assert not q.passed  # 0.74 < 0.75, whichever way it is read
    assert Quality("ssim", value=0.76, untrained=0.1, reference=1.0, value_floor=0.75).passed
    bits = Quality("bits", value=2.4, untrained=6.2, reference=2.0, value_floor=2.5, higher_is_better=False)
    assert bits.passed and bits.floor == pytest.approx((6.2 - 2.5) / (6.2 - 2.0))


def test_a_failed_check_fails_the_run_even_above_the_score_floor():
    label = Check("requested_label_accuracy", 0.85, 0.9, what="requested-label accuracy")
    q = Quality("legible_fraction", value=0.7, untrained=0.0, reference=0.8, floor=0.5, checks=(label,))
    assert q.score > q.floor and not q.passed
    assert label.sentence() == "requested-label accuracy 0.85 (needs >= 0.9): below its bound"
    assert Check("longest_run", 12, 19, higher_is_better=False).passed
    assert not Check("longest_run", 20, 19, higher_is_better=False).passed


def test_no_scale_no_pass_when_the_reference_is_no_better_than_untrained():
    q = Quality("legible_fraction", value=0.3, untrained=0.2, reference=0.2, floor=0.5)
    assert math.isnan(q.score) and not q.passed
    backwards = Quality("fid", value=5.0, untrained=3.0, reference=9.0, floor=0.5, higher_is_better=False)
    assert math.isnan(backwards.score) and not backwards.passed
    assert math.isnan(Quality("m", value=float("nan"), untrained=0.0, reference=1.0).score)


def test_the_sentence_reads_value_score_and_both_reference_points():
    q = Quality(
        "fid",
        value=14.2,
        untrained=61.0,
        reference=3.1,
        floor=0.6,
        higher_is_better=False,
        label="FID",
        untrained_is="the untrained generator",
        reference_is="real digits",
    )
    assert (
        q.sentence()
        == "FID 14.2: 0.808 of the way from the untrained generator (61.0) to real digits (3.1); floor 0.6"
    )


def test_the_record_as_metrics_json_holds_it_and_verdicts():
    q = Quality("ssim", value=0.5, untrained=0.1, reference=1.0, value_floor=0.75, checks=(Check("x", 1, 2),))
    d = q.as_dict()
    assert {"metric", "value", "untrained", "reference", "score", "floor", "higher_is_better"} <= set(d)
    assert d["passed"] is False and d["checks"][0]["passed"] is False
    assert verdict("pix2pix", d) == "below floor"
    assert verdict("pix2pix", None) == "no record"
    good = Quality("ssim", value=0.9, untrained=0.1, reference=1.0, value_floor=0.75).as_dict()
    assert verdict("pix2pix", good) == "ok"


# ---------------------------------------------------------------------------------------------
# Where the record shows: the report page, the gallery, `gdl quality`


def _record(value: float, **kw) -> Quality:
    return Quality(
        "legible_fraction",
        value=value,
        untrained=0.0,
        reference=0.8,
        value_floor=0.5,
        label="legible fraction",
        untrained_is="the untrained generator",
        reference_is="real held-out digits",
        **kw,
    )


def _page(q: Quality) -> str:
    from models.reporting.report import Image, Provenance, Report, render_html

    prov = Provenance("gan", "r1", "t", {}, "g", [], [])
    picture = np.zeros((8, 8, 3), np.uint8)
    return render_html(Report("gan", sections=[Image("samples", "s.png", picture)], quality=q), prov)


def test_the_report_opens_with_the_sentence_and_a_bar_and_warns_under_the_floor():
    good, bad = _page(_record(0.6)), _page(_record(0.2))
    for page, q in ((good, _record(0.6)), (bad, _record(0.2))):
        sentence = str(escape(q.sentence()))
        assert sentence in page and page.index(sentence) < page.index("<h2")  # before any section
        assert "class='bar'" in page
    assert "Below the demo's floor" in bad and "Below the demo" not in good
    fill = re.search(r"class='fill[^']*' style='width:([0-9.]+)%'", good)
    # The bar runs from -0.25 to 1.25: a score of 0.75 fills (0.75 + 0.25) / 1.5 of it.
    assert float(fill.group(1)) == pytest.approx(100 * (0.75 + 0.25) / 1.5, abs=0.1)


def _write_run(root: Path, technique: str, run_id: str, created: str, metrics: dict, thumbnail=True):
    run = root / technique / run_id
    run.mkdir(parents=True)
    files = {"metrics.json": {}, **({"thumbnail.png": {}} if thumbnail else {})}
    manifest = {"created_at": created, "headline": ["legible_fraction"], "files": files}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "params.json").write_text(json.dumps({"params": {}}))


def test_the_gallery_leads_with_each_techniques_score_and_thumbnail(tmp_path):
    from models.reporting.gallery import local_runs, render_gallery

    _write_run(
        tmp_path, "gan", "old", "2026-01-01", {"legible_fraction": 0.1, "quality": _record(0.1).as_dict()}
    )
    _write_run(
        tmp_path, "gan", "new", "2026-01-02", {"legible_fraction": 0.6, "quality": _record(0.6).as_dict()}
    )
    hostile = {
        "legible_fraction": 1,
        "quality": {"value": 1, "score": "<b>9</b>", "floor": [1], "sentence": 3},
    }
    _write_run(tmp_path, "vae", "x", "2026-01-01", hostile, thumbnail=False)
    page = render_gallery(local_runs(tmp_path))
    overview = page[page.index("<table class='overview'>") : page.index("</table>")]
    assert "<img alt='gan' src='gan/new/thumbnail.png'>" in overview  # the latest run's picture
    assert str(escape(_record(0.6).sentence())) in overview and "ok" in overview
    assert "vae/x/thumbnail.png" not in page  # no thumbnail listed in the manifest, none shown
    assert "<b>9" not in page and "below floor" in overview  # a record that is not one fails
    runs = page[page.index("<h2 id='gan'>") :]
    assert runs.index("0.75") < runs.index("0.125")  # per run, the score column: newest first


def test_gdl_quality_check_fails_naming_each_technique_under_its_floor(tmp_path, capsys, monkeypatch):
    from flows.cli import main
    from models.reporting import quality

    _write_run(tmp_path, "gan", "r", "t", {"quality": _record(0.6).as_dict()})
    _write_run(tmp_path, "cgan", "r", "t", {"quality": _record(0.2).as_dict()})
    assert main(["quality", "gan", "--check", "--runs", str(tmp_path)]) == 0
    assert main(["quality", "gan", "cgan", "dcgan", "--check", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cgan" in err and "dcgan" in err and "gan," not in err.replace("cgan", "").replace("dcgan", "")
    assert len(err.strip().splitlines()) == 1
    # A floor out of reach and named as such is reported, not failed; without --check nothing fails.
    monkeypatch.setitem(quality.EXPECTED_BELOW_FLOOR, "cgan", "tried: more steps")
    assert main(["quality", "gan", "cgan", "--check", "--runs", str(tmp_path)]) == 0
    assert "below floor (expected)" in capsys.readouterr().out
    assert main(["quality", "nope", "--runs", str(tmp_path)]) == 2


def test_generated_images_are_kept_reproducibly_and_load_without_pickles(tmp_path):
    from models.core.images import save_generated

    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int32)
    first = save_generated(tmp_path / "a", images, labels=labels).read_bytes()
    assert save_generated(tmp_path / "b", images, labels=labels).read_bytes() == first
    with np.load(tmp_path / "a" / "generated.npz", allow_pickle=False) as found:
        assert np.array_equal(found["images"], images) and np.array_equal(found["labels"], labels)
    with pytest.raises(ValueError, match="uint8"):
        save_generated(tmp_path, images.astype(np.float32))
