"""pix2pix: pairs stay aligned through the batches, and a short training run translates held-out
tiles closer to the truth than the untrained generator (L1, PSNR and SSIM), shown in its report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.core.files import digest_json
from models.core.images import save_png
from models.core.registry import StepContext, get
from models.reporting.report import Grid, Table
from models.techniques.translation.pix2pix import TINY, Pix2PixParams, batch


def shapes_photo(seed: int, h: int = 64, w: int = 96) -> np.ndarray:
    """A smooth background with a few flat-coloured rectangles: edges worth drawing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 120)], -1).astype(np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, h - 16), rng.integers(0, w - 16)
        image[top : top + rng.integers(8, 24), left : left + rng.integers(8, 24)] = rng.integers(0, 256, 3)
    return image


def test_a_batch_takes_the_same_images_of_both_domains_mirrored_alike():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    domains = {"train_a": images, "train_b": images.copy()}
    p = Pix2PixParams(image_size=32, batch_size=8, flip=True)
    x, y = batch(domains, p, step=3)
    assert np.array_equal(x, y) and x.shape == (8, 32, 32, 3)
    again, _ = batch(domains, p, step=3)
    assert np.array_equal(again, x) and not np.array_equal(batch(domains, p, step=4)[0], x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run of the real steps (vectorize, train, sample) on photos of coloured shapes."""
    import keras

    tmp = tmp_path_factory.mktemp("pix2pix")
    photos, dirs = tmp / "photos", {s: tmp / s for s in ("vectorize", "train", "sample")}
    photos.mkdir()
    for d in dirs.values():
        d.mkdir()
    for i in range(3):
        save_png(photos / f"p{i}.png", shapes_photo(i))
    t = get("pix2pix")
    overrides = {
        "direction": "a_to_b",
        "gf": 8,
        "df": 8,
        "steps": 60,
        "checkpoint_every": 30,
        "frame_every": 30,
    }
    p = Pix2PixParams(**{**t.demo_overrides, **TINY, **overrides})
    keras.utils.set_random_seed(0)
    t.vectorize(p, StepContext({}, dirs["vectorize"], inputs={"data": photos}))
    summary = t.train(
        p, StepContext({"vectorize": dirs["vectorize"]}, dirs["train"], key=digest_json(p.subset("train")))
    )
    t.sample(p, StepContext({"vectorize": dirs["vectorize"], "train": dirs["train"]}, dirs["sample"]))
    return t, p, dirs, summary


def test_training_translates_held_out_tiles_closer_to_the_truth_than_the_untrained_generator(trained):
    _, p, dirs, summary = trained
    found = json.loads((dirs["sample"] / "scores.json").read_text())["scores"]["a_to_b"]
    assert found["trained"]["l1"] < 0.8 * found["untrained"]["l1"]
    assert found["trained"]["psnr"] > found["untrained"]["psnr"] + 1.0
    assert found["trained"]["ssim"] > found["untrained"]["ssim"]
    assert (
        summary["steps"] == 60
        and summary["train_l1"] < json.loads((dirs["train"] / "history.json").read_text())["history"]["l1"][0]
    )


def test_the_report_shows_input_translation_truth_and_both_generators_scores(trained):
    t, p, dirs, _ = trained
    report = t.report(p, dirs)
    grid = next(s for s in report.sections if isinstance(s, Grid))
    assert len(grid.images) == 3 * min(p.samples, 4) and grid.captions[:3] == [
        "input",
        "translation",
        "truth",
    ]
    table = next(s for s in report.sections if isinstance(s, Table))
    assert [row["generator"] for row in table.rows] == ["trained", "untrained", "none: a blank page"]
    assert report.metrics["test_l1"] < report.metrics["test_l1_untrained"]
    # The blank page is the truths' median colour, scored like a translation.
    assert 0 < report.metrics["test_ssim_blank"] <= 1 and report.quality.checks[0].metric.endswith(
        "_over_blank"
    )
    assert len(list((dirs["train"] / "frames").glob("step-*.png"))) == 2
