"""The benchmark scripts run and report their ratios (numbers go in notes, never in assertions).

Not part of the test suite (pytest's testpaths is tests/): `make bench-smoke` runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str) -> dict:
    """Run a benchmark script; its last line is one JSON object of ratios."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_text_sampling_benchmark_prints_its_ratios_as_json():
    report = bench(
        "text_sampling.py",
        *("--max-chars", "20000", "--book-chars", "3", "--length", "20", "--stateful-length", "50"),
    )
    for key in ("default_vs_book", "stateful_vs_book", "default_vs_keras_io", "stateful_vs_keras_io"):
        assert report[key] > 0
    for key in ("keras_io_chars_per_s", "vectorize_memory_ratio"):
        assert report[key] > 0


def test_deepdream_step_benchmark_prints_its_ratio_as_json():
    report = bench(
        "deepdream_step.py", *("--max-side", "48", "--steps", "2", "--num-octave", "2", "--random-weights")
    )
    assert report["compiled_vs_eager"] > 0 and report["traces"] == 1


def test_adversarial_benchmark_prints_its_ratio_as_json():
    report = bench("adversarial.py", "--size", "64", "--steps", "2")
    assert report["compiled_vs_eager"] > 0 and 0 <= report["differing_fraction"] <= 1


def test_style_transfer_benchmark_prints_its_ratios_as_json():
    report = bench(
        "style_transfer.py",
        *(
            "--height",
            "32",
            "--iterations",
            "1",
            "--evaluations",
            "3",
            "--forward-runs",
            "2",
            "--sgd-max",
            "20",
        ),
    )
    assert isinstance(report["keras_io_reached"], bool) and report["keras_io_steps"] >= 1
    for key in ("fused_vs_separate", "fused_vs_book", "fused_vs_keras_io", "fast_vs_optimisation"):
        assert report[key] > 0


def test_gan_step_benchmark_prints_its_ratio_as_json():
    report = bench(
        "gan_step.py", *("--side", "8", "--width", "0.1", "--batch", "4", "--steps", "2", "--per-call", "2")
    )
    # The book loop exits non-zero (bench asserts rc 0) if its combined update changed D's weights.
    assert report["compiled_vs_book"] > 0 and report["book_steps_per_s"] > 0
    assert report["compiled_vs_keras_io"] > 0 and report["keras_io_steps_per_s"] > 0
    assert report["grouped_vs_compiled"] > 0 and report["per_call"] == 2


def test_translation_step_benchmark_prints_its_ratios_as_json():
    report = bench(
        "translation_step.py", *("--size", "32", "--gf", "4", "--df", "4", "--batch", "1", "--steps", "2")
    )
    for key in ("cyclegan_compiled_vs_book", "pix2pix_compiled_vs_book"):
        assert report[key] > 0
