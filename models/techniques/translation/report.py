"""The report pieces CycleGAN and pix2pix share: scores as metrics, table rows and the quality
record, image triplets, the training frames and loss curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.files import numbered_files
from models.reporting.quality import Check, Quality
from models.reporting.report import Animation, Curve, Grid, Table
from models.techniques.translation.common import FRAMES, enlarged


def score_metrics(found: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """{direction: {"trained"/"untrained": scores}} -> metrics: `ssim_a_to_b`, `l1_a_to_b_untrained`..."""
    return {
        "_".join(filter(None, (metric, direction, "" if model == "trained" else model))): value
        for direction, by_model in found.items()
        for model, s in by_model.items()
        for metric, value in s.items()
    }


BLANK_MARGIN = 0.1  # the demo's floor on how far a translation's SSIM must beat a blank page's


def ssim_quality(
    found: Mapping[str, Mapping[str, Mapping[str, float]]],
    direction: str,
    what: str,
    value_floor: float,
    checks: tuple[Check, ...] = (),
) -> Quality:
    """The quality record of a translation: the trained generator's SSIM against the truth, read
    between the untrained generator's (same seed) and the truth itself (SSIM 1)."""
    blank = found[direction].get("blank")
    if blank is not None:  # an SSIM a blank page reaches is no sign of learning
        margin = found[direction]["trained"]["ssim"] - blank["ssim"]
        checks = (
            *checks,
            Check(f"ssim_{direction}_over_blank", margin, BLANK_MARGIN, what="SSIM over a blank page"),
        )
    return Quality(
        metric=f"ssim_{direction}",
        value=found[direction]["trained"]["ssim"],
        untrained=found[direction]["untrained"]["ssim"],
        reference=1.0,
        value_floor=value_floor,
        label=f"{what} SSIM",
        untrained_is="the untrained generator",
        reference_is="the true images themselves",
        checks=checks,
    )


def score_rows(found: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """{direction: {model: scores}} -> table rows: trained, untrained, then the blank page."""
    order = {"trained": 0, "untrained": 1, "blank": 2}
    return [
        {
            "translation": direction.replace("_to_", " -> ").upper(),
            "generator": "none: a blank page" if model == "blank" else model,
            **{k: round(v, 4) for k, v in by_model[model].items()},
        }
        for direction, by_model in found.items()
        for model in sorted(by_model, key=lambda m: order.get(m, len(order)))
    ]


def triplets(
    caption: str, file: str, rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], labels: Sequence[str]
) -> Grid:
    """One row per image: (input, translation, third: its truth or its reconstruction)."""
    images = [enlarged(im) for row in rows for im in row]
    return Grid(caption, file, images, [label for _ in rows for label in labels], cols=3)


def frames_section(caption: str, train_dir: Path) -> Animation | None:
    from models.core.images import load_image

    files = numbered_files(train_dir / FRAMES, "step")
    if not files:
        return None
    return Animation(
        caption, "training.gif", [load_image(f) for _, f in files], [f"step {step}" for step, _ in files]
    )


def loss_curve(
    caption: str, file: str, history: Mapping[str, Sequence[float]], names: Sequence[str]
) -> Curve:
    """Per-step losses, each a running mean over 2% of the steps (single-image steps are noisy)."""
    steps = len(history[names[0]])
    window = max(1, steps // 50)
    series = {n: np.convolve(history[n], np.ones(window) / window, mode="valid").tolist() for n in names}
    x = list(range(window, steps + 1))
    return Curve(
        f"{caption} (running mean of {window} steps)" if window > 1 else caption,
        file,
        series,
        x="step",
        y="loss",
        x_values=x,
    )


def scores_table(caption: str, found: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    return Table(caption, score_rows(found))
