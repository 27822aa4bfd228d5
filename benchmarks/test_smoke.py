"""The benchmark scripts run and report their ratios (numbers go in notes, never in assertions).

Not part of the test suite (pytest's testpaths is tests/): `make bench-smoke` runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_text_sampling_benchmark_prints_its_ratios_as_json():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "text_sampling.py"),
            "--max-chars",
            "20000",
            "--book-chars",
            "3",
            "--length",
            "20",
            "--stateful-length",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("default_vs_book", "stateful_vs_book", "vectorize_memory_ratio"):
        assert report[key] > 0


def test_adversarial_benchmark_prints_its_ratio_as_json():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "adversarial.py"), "--size", "64", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["eager_vs_compiled"] > 0 and 0 <= report["differing_fraction"] <= 1
