"""Every registered technique, and the test-only image technique, runs its real steps in its tiny
setting and publishes a complete run directory."""

from __future__ import annotations

import json

import pytest
from conftest import TEST_TECHNIQUES, run_steps, write_params

from models.core.registry import techniques
from models.reporting.report import artifact_plan
from tasks import publish

ALL = sorted({*techniques(), *TEST_TECHNIQUES.split(",")})


@pytest.fixture
def with_test_techniques(project, monkeypatch):
    monkeypatch.setenv("GDL_EXTRA_TECHNIQUES", TEST_TECHNIQUES)
    write_params(project)  # now with the test techniques' sections
    return project


@pytest.mark.parametrize("technique", ALL)
def test_every_technique_runs_its_real_steps_and_publishes_a_full_report(with_test_techniques, technique):
    from models.core.registry import get

    project = with_test_techniques
    t = get(technique)
    steps = run_steps(technique)
    result = publish.run(technique, steps["params"], steps["upstream"])
    run = project / result["run_dir"]
    manifest = json.loads((run / "manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert manifest["headline"] == list(t.headline)
    assert t.headline[0] in metrics, "the first headline metric is what the gallery charts"
    html = (run / "report.html").read_text()
    built = publish.assemble(technique, steps["params"], steps["upstream"], run)
    if built["report"].weights:  # the weights a run used are in its metrics and on its page
        assert metrics["weights"] == built["report"].weights and built["report"].weights in html
    # Provenance on every page, without the technique writing it.
    for heading in ("Provenance", "Hyperparameters", "Steps", "Data"):
        assert f">{heading}<" in html
    for name, entry in steps["upstream"]["download"]["inputs"].items():
        assert entry["sha256"] in html and name in html
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[0] == t.history_x
    for name in built["files"]:
        assert (run / name).is_file() and name in manifest["files"]
    plan = artifact_plan(built["report"], built["provenance"], built["files"], "here")
    assert len({item["key"] for item in plan}) == len(plan)
    if technique not in TEST_TECHNIQUES.split(","):  # every real technique: against two points
        _check_quality_record(technique, run, metrics, manifest, html)


# The techniques whose quality metrics score generated images: they keep them in generated.npz.
GENERATES = {
    "gan", "dcgan", "wgan", "wgan_gp", "cgan", "dcgan_frogs", "face_gan", "vae",
    "cyclegan", "pix2pix", "style_transfer", "fast_style_transfer",
}  # fmt: skip


def _check_quality_record(technique, run, metrics, manifest, html):
    import math

    import numpy as np
    from markupsafe import escape

    record = metrics["quality"]
    for key in ("metric", "value", "untrained", "reference", "score", "floor", "higher_is_better"):
        assert key in record, f"{technique}: quality record without {key}"
    if record["metric"] in metrics:  # the headline number and the record's value are one number
        assert record["value"] == metrics[record["metric"]]
    span = record["reference"] - record["untrained"]
    if span and (span > 0) == record["higher_is_better"]:
        assert math.isclose(record["score"], (record["value"] - record["untrained"]) / span, rel_tol=1e-9)
    else:
        assert record["score"] is None and record["passed"] is False
    assert str(escape(record["sentence"])) in html
    assert "thumbnail.png" in manifest["files"]
    if technique in GENERATES:
        with np.load(run / "samples" / "generated.npz", allow_pickle=False) as found:
            assert found["images"].dtype == np.uint8 and len(found["images"]) >= 1


def _zip(path, members: dict[str, bytes]):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _png(seed: int) -> bytes:
    import numpy as np

    from models.core.images import png_bytes

    return png_bytes(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8))


def test_an_archive_input_is_extracted_and_shared_inputs_are_fetched_once(with_test_techniques):
    from flows.config import resolve_params
    from tasks.steps import download

    project = with_test_techniques
    archive = _zip(
        project / "mine.zip", {"set/a.png": _png(1), "set/b/c.png": _png(2), "__MACOSX/x": b"junk"}
    )
    params = resolve_params("tiny_image", None, {"tiny_image.textures_source": str(archive)})
    logs: list[str] = []
    first = download("tiny_image", params, log=logs.append)
    textures = project / first["inputs"]["textures"]["dir"] / "textures"
    assert sorted(p.relative_to(textures).as_posix() for p in textures.rglob("*.png")) == [
        "set/a.png",
        "set/b/c.png",
    ]
    assert first["inputs"]["photo"]["dir"].startswith("data/raw/chelsea/")
    # Other params of later steps, or another technique's run, reuse the same input slots.
    other = resolve_params(
        "tiny_image", None, {"tiny_image.textures_source": str(archive), "tiny_image.size": 48}
    )
    second = download("tiny_image", other, log=logs.append)
    assert {k: v["dir"] for k, v in second["inputs"].items()} == {
        k: v["dir"] for k, v in first["inputs"].items()
    }
    assert sum("already downloaded" in line for line in logs) == 3
    assert len(list((project / "data" / "raw" / "mobilenet_v2_imagenet").iterdir())) == 2  # slot + its lock


def test_a_hostile_archive_input_fails_in_one_line_and_leaves_nothing(with_test_techniques):
    from flows.config import resolve_params
    from models.core.errors import GdlError
    from tasks.steps import download

    project = with_test_techniques
    archive = _zip(project / "evil.zip", {"ok.png": _png(1), "../../evil.png": _png(2)})
    params = resolve_params("tiny_image", None, {"tiny_image.textures_source": str(archive)})
    with pytest.raises(GdlError, match="member '../../evil.png' escapes the target folder") as err:
        download("tiny_image", params, log=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (project / "data" / "raw" / "textures").exists()  # no slot, no lock, no empty folder
    assert not list(project.rglob("evil.png"))


def test_a_failed_step_leaves_no_folder_or_lock_file_behind(project):
    """Issue 7 item 7: a step that fails leaves data/ as it found it, except what a resumable
    step checkpointed before failing (kept, to resume from)."""
    from models.core.errors import GdlError
    from tasks.steps import execute

    done = run_steps("text_lstm")
    params, upstream = done["params"], done["upstream"]
    data = project / "data"
    before = sorted(p.relative_to(data) for p in data.rglob("*"))

    def fails(t, p, ctx):
        (ctx.out / "partial.bin").write_bytes(b"half")
        raise GdlError("boom")

    def fails_at_once(t, p, ctx):
        raise GdlError("boom")

    changed = {**params, "temperatures": [0.3]}  # a new sample slot, a new run directory
    with pytest.raises(GdlError, match="boom"):
        execute("text_lstm", "sample", changed, upstream, fails)
    retrained = {**params, "learning_rate": 0.02}  # a new, resumable, train slot
    with pytest.raises(GdlError, match="boom"):
        execute("text_lstm", "train", retrained, upstream, fails_at_once)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before

    with pytest.raises(GdlError, match="boom"):
        execute("text_lstm", "train", retrained, upstream, fails)
    kept = [p for p in (data / "checkpoints" / "text_lstm").rglob("partial.bin")]
    assert len(kept) == 1  # what a resumable step wrote is kept for the next try
    assert (kept[0].parent.parent / f".{kept[0].parent.name}.gdl-lock").exists()
