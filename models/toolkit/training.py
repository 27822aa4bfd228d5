"""Training runtimes every technique shares: resumable `fit` with callbacks, and a resumable
optimisation loop for techniques that optimise an image instead of a network.

`fit_resumable`: one `fit` call per epoch (as the books do), a checkpoint after each. The
checkpoint directory holds `epoch-NNNN.keras` (model + optimizer state after the last completed
epoch), `state.json` (epochs done, that file's name, history, and the fingerprint of everything
that determines training: the step's cache key) and, once training is finished, `model.keras`.
Keras callbacks see absolute epoch numbers, so a callback that writes per-epoch artefacts (a
sample grid, the book's per-epoch text samples) into the checkpoint directory keeps them across
a resume.

`optimize_resumable`: a compiled step run for N iterations over variables (an image, an
optimizer's slots), checkpointed every `checkpoint_every` iterations as one `.npz`, resumed after
kill -9 from the last checkpoint with the same result as an uninterrupted run; optional early
stop (DeepDream's `max_loss`, an attack's target probability) and snapshots (frames of the image).

Both show progress twice: Keras' own progress bar (rate and ETA) on the terminal, and a
`progress(done, total, logs)` callback for the orchestrator, called at most once a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.core.budget import NO_BUDGET, Budget
from models.core.errors import GdlError
from models.core.files import npz_bytes, read_json, write_bytes_atomic, write_json_atomic, writing

if TYPE_CHECKING:
    from models.toolkit.distribute import Replicas

STATE = "state.json"
FINAL = "model.keras"
PROGRESS_EVERY = 1.0  # seconds between progress(...) calls inside an epoch or a loop

ProgressFn = Callable[[float, int, Mapping[str, float]], None]

# A loss this many times the untrained model's (the first batch's) has diverged: a learning rate
# of 1e30 gives 1e31, while a loss that trains goes down from there.
DIVERGENCE_FACTOR = 1e3


class Diverged(GdlError):
    """Training diverged (a non-finite loss, or one that grew by orders of magnitude); the train
    step names its technique in front of the message."""


def _first_loss_callback(found: dict[str, float]):
    """A Keras callback keeping the first batch's loss: the untrained model's, the reference
    against which a loss that grows is divergence."""
    import keras

    class FirstLoss(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if "loss" not in found and logs and "loss" in logs:
                found["loss"] = float(logs["loss"])

    return FirstLoss()


def _grown(result: Mapping[str, Any], first: float | None) -> dict[str, float]:
    """The epoch's losses over DIVERGENCE_FACTOR times the first batch's loss."""
    if not first or first <= 0:
        return {}
    losses = {k: float(v[-1]) for k, v in result.items() if k in ("loss", "val_loss")}
    return {k: v for k, v in losses.items() if v > DIVERGENCE_FACTOR * first}


def configure_runtime(
    device: str, mixed_precision: bool, log: Callable[[str], None], float32_only: str = ""
) -> str:
    """Apply device / precision choices; return the device actually used ('cpu' or 'gpu').
    `float32_only`: why this technique cannot use mixed precision (then a request is logged
    with that reason and ignored)."""
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
    if mixed_precision and float32_only:
        log(f"mixed_precision ignored: {float32_only}")
        mixed_precision = False
    if mixed_precision and used == "gpu":
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        if mixed_precision:
            log("mixed_precision ignored: no GPU in use")
        keras.mixed_precision.set_global_policy("float32")
    return used


def _scope(replicas: Replicas | None) -> Callable[[], Any]:
    """The context to create or load variables in: the replicas' strategy scope, or none."""
    return replicas.scope if replicas is not None else contextlib.nullcontext


def _replica_summary(replicas: Replicas | None, variable: Any) -> dict[str, Any]:
    """How many replicas trained and on which devices, read from where `variable` lives (its
    mirrored copies), so a run that left its variables on one device does not claim two."""
    if replicas is None:
        return {}
    copies = getattr(getattr(variable, "value", variable), "values", None)
    if not copies:
        return replicas.summary()
    import tensorflow as tf

    spec = [tf.DeviceSpec.from_string(c.device) for c in copies]
    return {
        "replicas": len(copies),
        "devices": [d.replace(job=None, replica=None, task=None).to_string() for d in spec],
    }


def load_model(path: Path):
    """Load a `.keras` file in safe mode (no arbitrary code from the archive)."""
    import keras

    return keras.models.load_model(path, safe_mode=True, compile=True)


def _interactive() -> bool:
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def progress_bar(target: int | None, unit: str = "step"):
    """Keras' progress bar: redrawn in place on a terminal, one line per finished bar in logs."""
    import keras

    verbose = 1 if _interactive() else 2
    # Every value shown is already what should be displayed (Keras' running means, or this
    # iteration's loss): no stateless metrics, so the bar does not average them again.
    return keras.utils.Progbar(target, verbose=verbose, interval=0.5, unit_name=unit, stateless_metrics=())


class _Throttled:
    """Calls `progress` at most every PROGRESS_EVERY seconds, and always when `force` is set."""

    def __init__(self, progress: ProgressFn):
        self.progress = progress
        self.last = 0.0

    def __call__(self, done: float, total: int, logs: Mapping[str, float], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.progress(done, total, logs)


def _progress_callback(epoch: int, epochs: int, steps: int | None, report: _Throttled):
    """A Keras callback: Keras' progress bar per epoch, and fractional progress to `report`.

    Reading the logs forces TensorFlow to finish the step (no overlap with the input pipeline:
    measured 30% slower on 2 cores when done every batch), so they are read twice a second only.
    """
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch_index, logs=None):
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            self.bar = progress_bar(steps)
            self.last = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if now - self.last < 0.5:
                return
            self.last = now
            values = [(k, float(v)) for k, v in (logs or {}).items()]
            self.bar.update(batch + 1, values=values, finalize=False)
            # Whole numbers mean "epoch done and checkpointed": within an epoch stay below them.
            fraction = (batch + 1) / steps if steps else 0.0
            report(epoch + min(fraction, 0.99), epochs, dict(values))

        def on_epoch_end(self, epoch_index, logs=None):
            values = [(k, float(v)) for k, v in (logs or {}).items()]
            self.bar.update(steps or self.bar._seen_so_far, values=values, finalize=True)

    return Progress()


def shape_summary(models: Sequence[Any], input_shape: Sequence[int]) -> dict[str, Any]:
    """What a run trains, for reports and the rehearsal table: the parameters of the networks it
    trains or optimises through, and the shape of one training batch."""
    return {
        "parameters": int(sum(m.count_params() for m in models)),
        "input_shape": [int(d) for d in input_shape],
    }


def fit_resumable(
    *,
    ckpt_dir: Path,
    fingerprint: str,
    epochs: int,
    build_model: Callable[[], Any],
    train_data: Callable[[int], Any],
    val_data: Any,
    samples_per_epoch: int,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[Any] = (),
    progress: ProgressFn,
    log: Callable[[str], None],
    budget: Budget = NO_BUDGET,
    replicas: Replicas | None = None,
) -> dict[str, Any]:
    """Train to `epochs` epochs, resuming from `ckpt_dir` when it holds a matching checkpoint.

    `train_data(epoch)` returns that epoch's dataset, so shuffling is seeded per epoch and a
    resumed run sees the same batches as an uninterrupted one. `callbacks` are Keras callbacks:
    they see the absolute epoch number, and setting `model.stop_training` ends training (recorded,
    so a re-run does not continue). Each epoch is its own `fit` call, so `on_train_begin` runs
    every epoch: a callback that keeps state across epochs must keep it in its own attributes
    (Keras' EarlyStopping resets its patience there and so only sees one epoch at a time).
    A loss that turns NaN or infinite stops training with an error and keeps the last good
    checkpoint. A spent `budget` ends training after the epoch it finds it in, with
    BudgetReached (the epoch's checkpoint written: the next run resumes from it). `replicas`
    (models.toolkit.distribute.data_parallel): the model is built or loaded under its strategy,
    so `fit` splits each global batch between the replicas.
    """
    scope = _scope(replicas)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state_path = ckpt_dir / STATE
    state = read_json(state_path) if state_path.exists() else None
    saved = ckpt_dir / state["checkpoint"] if state and "checkpoint" in state else None
    if state and state.get("fingerprint") == fingerprint and saved and saved.exists():
        with scope():
            model = load_model(saved)
        start = int(state["epoch"])
        history: dict[str, list[float]] = state["history"]
        first = dict(state.get("first_batch", {}))
        stopped = bool(state.get("stopped", False))
        log(f"resuming from epoch {start} of {epochs} ({saved.name})")
    else:
        if state:
            log(f"checkpoint in {ckpt_dir} is from other params, data or code: starting over")
        for child in ckpt_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        with scope():
            model = build_model()
        start, history, stopped, first = 0, {}, False, {}

    report = _Throttled(progress)
    for epoch in range(start, epochs if not stopped else start):
        t0 = time.perf_counter()
        # initial_epoch/epochs make Keras run exactly this epoch and report its absolute number.
        result = model.fit(
            train_data(epoch),
            validation_data=val_data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
            shuffle=False,
            callbacks=[
                _first_loss_callback(first),
                _progress_callback(epoch, epochs, steps_per_epoch, report),
                *callbacks,
            ],
        ).history
        seconds = time.perf_counter() - t0
        bad = {k: f"{float(v[-1])}" for k, v in result.items() if not math.isfinite(float(v[-1]))}
        grown = _grown(result, first.get("loss"))
        bad.update(
            {
                k: f"{v:.3g} (over {DIVERGENCE_FACTOR:g}x the first batch's {first['loss']:.4g})"
                for k, v in grown.items()
            }
        )
        if bad:
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was written"
            raise Diverged(
                f"training diverged in epoch {epoch + 1}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
                f"{kept}. Lower learning_rate and run again"
            )
        for name, values in result.items():
            history.setdefault(name, []).append(float(values[-1]))
        history.setdefault("samples_per_s", []).append(samples_per_epoch / seconds)
        history.setdefault("epoch_seconds", []).append(seconds)
        # One file per epoch, named by state.json only once it is whole: a kill at any moment
        # leaves state.json pointing at a checkpoint of exactly the epochs it counts.
        name = f"epoch-{epoch + 1:04d}.keras"
        tmp = ckpt_dir / f".{name}.{os.getpid()}.tmp.keras"
        with writing(ckpt_dir / name, tmp):  # a full disk: one line, no half-written file left
            model.save(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, ckpt_dir / name)
        # A callback that stops training (EarlyStopping and the like) stops it for good: the
        # decision is recorded, so a re-run does not train on.
        stopped = bool(getattr(model, "stop_training", False))
        write_json_atomic(
            state_path,
            {
                "epoch": epoch + 1,
                "checkpoint": name,
                "fingerprint": fingerprint,
                "history": history,
                "stopped": stopped,
                "first_batch": first,
            },
        )
        for old in ckpt_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        logs = {k: v[-1] for k, v in history.items()}
        log(
            f"epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "epoch_seconds")
        )
        report(epoch + 1, epochs, logs, force=True)
        if stopped:
            log(f"a callback stopped training after epoch {epoch + 1}")
            break
        if epoch + 1 < epochs and budget.spent():
            raise budget.stop(epoch + 1, epochs, "epoch")

    shutil.copyfile(ckpt_dir / read_json(state_path)["checkpoint"], ckpt_dir / FINAL)
    return {
        "history": history,
        "resumed_from": start,
        "stopped_early": stopped,
        "parameters": int(model.count_params()),
        **_replica_summary(replicas, model.weights[0]),
    }


# ---------------------------------------------------------------------------------------------
# Optimising an image


def model_variables(**models: Any) -> dict[str, Any]:
    """Every weight of these Keras models (trainable or not: batch-norm statistics too), named
    for a checkpoint: `generator/0003`, and their dropout layers' seed-generator states (not in
    `model.weights`; without them a resumed run would draw other dropout masks): `generator/seed00`.
    Pass the result as `optimize_resumable`'s variables."""
    weights = {f"{name}/{i:04d}": v for name, model in models.items() for i, v in enumerate(model.weights)}
    seeds = {
        f"{name}/seed{i:02d}": v
        for name, model in models.items()
        for i, v in enumerate(v for v in model.variables if "seed_generator_state" in v.path)
    }
    return {**weights, **seeds}


def _optimizer_list(optimizer: Any) -> list[Any]:
    if optimizer is None:
        return []
    return list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]


def _slots(optimizers: Sequence[Any]) -> dict[str, Any]:
    # One optimizer keeps the historical names (opt.NNNN), so older checkpoints still resume.
    if len(optimizers) == 1:
        return {f"opt.{i:04d}": v for i, v in enumerate(optimizers[0].variables)}
    return {f"opt{j}.{i:04d}": v for j, o in enumerate(optimizers) for i, v in enumerate(o.variables)}


def _state_arrays(variables: Mapping[str, Any], optimizers: Sequence[Any]) -> dict[str, np.ndarray]:
    arrays = {f"var.{name}": np.asarray(v.numpy()) for name, v in variables.items()}
    arrays.update({k: np.asarray(v.numpy()) for k, v in _slots(optimizers).items()})
    return arrays


def _restore(
    arrays: Mapping[str, np.ndarray], variables: Mapping[str, Any], optimizers: Sequence[Any]
) -> bool:
    """Assign saved values; False (nothing assigned) if they do not fit these variables."""
    wanted = {f"var.{n}": v for n, v in variables.items()} | _slots(optimizers)
    if set(arrays) != set(wanted) or any(tuple(arrays[k].shape) != tuple(v.shape) for k, v in wanted.items()):
        return False
    for k, v in wanted.items():
        v.assign(arrays[k])
    return True


def step_summary(result: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The counts of an `optimize_resumable(..., label="step")` run that took `seconds`: steps in
    all, steps per second of this run (None when it only found a finished one), and the step it
    resumed from."""
    trained = result["iterations"] - result["resumed_from"]
    return {
        "steps": result["iterations"],
        "train_steps_per_s": trained / seconds if trained else None,
        "resumed_from_step": result["resumed_from"],
    }


def optimize_resumable(
    *,
    ckpt_dir: Path,
    fingerprint: str,
    variables: Mapping[str, Any],
    step: Callable[[int], Mapping[str, Any]],
    iterations: int,
    checkpoint_every: int,
    optimizer: Any = None,  # one optimizer, or a list (a GAN's generator and discriminator)
    should_stop: Callable[[Mapping[str, float]], bool] | None = None,
    snapshot_every: int = 0,
    snapshot: Callable[[int], None] | None = None,
    progress: ProgressFn,
    log: Callable[[str], None],
    label: str = "iteration",
    budget: Budget = NO_BUDGET,
    replicas: Replicas | None = None,
) -> dict[str, Any]:
    """Run `step(i)` for i in [0, iterations), resumable from `ckpt_dir`.

    `variables` (name -> keras/tf Variable: the image, a network's weights (`model_variables`),
    anything else the loop updates) and the `optimizer`'s own variables (each optimizer's, when
    given a list; each built on the variables it trains beforehand) are saved every
    `checkpoint_every` iterations and at the end;
    `step` returns scalar metrics (tensors or floats) recorded per iteration. `should_stop`
    (given the latest metrics) ends the loop early. `snapshot(i)` is called after iteration i
    when (i + 1) % snapshot_every == 0, to write frames into `ckpt_dir`: they survive a resume.
    Non-finite metrics stop with an error, keeping the last good checkpoint. A spent `budget`
    ends the loop after the iteration it finds it in: a checkpoint of that iteration, then
    BudgetReached (the next run resumes there, with the result of an uninterrupted run). With `replicas`
    (models.toolkit.distribute.data_parallel) the variables and optimizers are mirrored (created
    under its strategy's scope) and `step` runs its update on every replica; checkpoints read
    and assign the mirrored variables like any other.
    """
    if iterations < 0 or checkpoint_every < 1:
        raise GdlError(
            f"iterations must be >= 0 and checkpoint_every >= 1 (got {iterations}, {checkpoint_every})"
        )
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    optimizers = _optimizer_list(optimizer)
    if len(optimizers) == 1 and not optimizers[0].built:
        with _scope(replicas)():
            optimizers[0].build(list(variables.values()))
    unbuilt = [o for o in optimizers if not o.built]
    if unbuilt:
        raise GdlError("build each optimizer on the variables it trains before optimize_resumable")
    state_path = ckpt_dir / STATE
    state = read_json(state_path) if state_path.exists() else None
    start, history, stopped = 0, {}, False
    if state and state.get("fingerprint") == fingerprint and (ckpt_dir / state["checkpoint"]).exists():
        with np.load(ckpt_dir / state["checkpoint"], allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
        if _restore(arrays, variables, optimizers):
            start, history, stopped = int(state["iteration"]), state["history"], bool(state["stopped"])
            log(f"resuming from {label} {start} of {iterations}")
    if start == 0:
        if state:
            log(f"checkpoint in {ckpt_dir} is from other params, data or code: starting over")
        for child in ckpt_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def save(done: int, stopped: bool) -> None:
        name = f"{label}-{done:06d}.npz"
        write_bytes_atomic(ckpt_dir / name, npz_bytes(_state_arrays(variables, optimizers)))
        write_json_atomic(
            state_path,
            {
                "iteration": done,
                "checkpoint": name,
                "fingerprint": fingerprint,
                "history": history,
                "stopped": stopped,
            },
        )
        for old in ckpt_dir.glob(f"{label}-*.npz"):
            if old.name != name:
                old.unlink()

    report = _Throttled(progress)
    bar = progress_bar(iterations, unit=label)
    done = saved_at = start
    if start:
        bar.update(start)
    for i in range(start, iterations if not stopped else start):
        # A numpy integer, not a Python int: a compiled step is traced once, not per iteration.
        metrics = {k: float(v) for k, v in step(np.int64(i)).items()}
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise Diverged(
                f"optimisation diverged at {label} {i + 1}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
                + (
                    f"the checkpoint of {label} {saved_at} is kept"
                    if saved_at
                    else "no checkpoint was written yet"
                )
            )
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        done = i + 1
        bar.update(done, values=list(metrics.items()))
        report(done, iterations, metrics)
        if snapshot and snapshot_every and done % snapshot_every == 0:
            snapshot(i)
        stopped = bool(should_stop and should_stop(metrics))
        if stopped:
            log(
                f"stopped early after {label} {done} ("
                + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                + ")"
            )
        out_of_time = not stopped and done < iterations and budget.spent()
        if stopped or out_of_time or done % checkpoint_every == 0 or done == iterations:
            save(done, stopped)
            saved_at = done
        if stopped:
            break
        if out_of_time:
            bar.update(done, finalize=True)
            report(done, iterations, metrics, force=True)
            raise budget.stop(done, iterations, label)
    if done == 0:
        save(0, False)
    bar.update(done, finalize=True)
    report(done, iterations, {k: v[-1] for k, v in history.items()}, force=True)
    return {
        "history": history,
        "iterations": done,
        "resumed_from": start,
        "stopped_early": stopped,
        **_replica_summary(replicas, next(iter(variables.values()), None)),
    }
