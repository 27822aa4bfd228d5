"""Resumable training: one `fit` call per epoch (as the books do), a checkpoint after each.

The checkpoint directory holds `epoch-NNNN.keras` (model + optimizer state after the last
completed epoch), `state.json` (epochs done, that file's name, history, and a fingerprint of
everything that determines training) and, once training is finished, `model.keras`. A run killed
mid-training resumes from the last completed epoch and ends with the same epoch count; a
checkpoint left by different params or data is discarded, never resumed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from models.files import GdlError, read_json, write_json_atomic

STATE = "state.json"
FINAL = "model.keras"


def configure_runtime(device: str, mixed_precision: bool, log: Callable[[str], None]) -> str:
    """Apply device / precision choices; return the device actually used ('cpu' or 'gpu')."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise GdlError("device=gpu but TensorFlow sees no GPU; use device=auto or device=cpu")
    if device == "cpu" and gpus:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already initialised its devices in this process
            raise GdlError(
                "device=cpu must be chosen before TensorFlow starts: run this technique alone "
                "or with CUDA_VISIBLE_DEVICES=''"
            ) from None
    used = "gpu" if gpus and device != "cpu" else "cpu"
    if mixed_precision and used == "gpu":
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        if mixed_precision:
            log("mixed_precision ignored: no GPU in use")
        keras.mixed_precision.set_global_policy("float32")
    return used


def load_model(path: Path):
    """Load a `.keras` file in safe mode (no arbitrary code from the archive)."""
    import keras

    return keras.models.load_model(path, safe_mode=True, compile=True)


def fit_resumable(
    *,
    ckpt_dir: Path,
    fingerprint: str,
    epochs: int,
    build_model: Callable[[], Any],
    train_data: Callable[[int], Any],
    val_data: Any,
    samples_per_epoch: int,
    progress: Callable[[int, int, Mapping[str, float]], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train to `epochs` epochs, resuming from `ckpt_dir` when it holds a matching checkpoint.

    `train_data(epoch)` returns that epoch's dataset, so shuffling is seeded per epoch and a
    resumed run sees the same batches as an uninterrupted one.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state_path = ckpt_dir / STATE
    state = read_json(state_path) if state_path.exists() else None
    saved = ckpt_dir / state["checkpoint"] if state and "checkpoint" in state else None
    if state and state.get("fingerprint") == fingerprint and saved and saved.exists():
        model = load_model(saved)
        start = int(state["epoch"])
        history: dict[str, list[float]] = state["history"]
        log(f"resuming from epoch {start} of {epochs} ({saved})")
    else:
        if state:
            log(f"checkpoint in {ckpt_dir} is from other params or data: starting over")
        for child in ckpt_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        model, start, history = build_model(), 0, {}

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        result = model.fit(
            train_data(epoch), validation_data=val_data, epochs=1, verbose=0, shuffle=False
        ).history
        seconds = time.perf_counter() - t0
        for name, values in result.items():
            history.setdefault(name, []).append(float(values[-1]))
        history.setdefault("samples_per_s", []).append(samples_per_epoch / seconds)
        history.setdefault("epoch_seconds", []).append(seconds)
        # One file per epoch, named by state.json only once it is whole: a kill at any moment
        # leaves state.json pointing at a checkpoint of exactly the epochs it counts.
        name = f"epoch-{epoch + 1:04d}.keras"
        tmp = ckpt_dir / f".{name}.{os.getpid()}.tmp.keras"
        model.save(tmp)
        os.replace(tmp, ckpt_dir / name)
        write_json_atomic(
            state_path,
            {"epoch": epoch + 1, "checkpoint": name, "fingerprint": fingerprint, "history": history},
        )
        for old in ckpt_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        logs = {k: v[-1] for k, v in history.items()}
        log(
            f"epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "epoch_seconds")
        )
        progress(epoch + 1, epochs, logs)

    shutil.copyfile(ckpt_dir / read_json(state_path)["checkpoint"], ckpt_dir / FINAL)
    return {"history": history, "resumed_from": start}
