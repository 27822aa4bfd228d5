"""The shared training runtimes: the resumable optimisation loop and fit's failure handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import REPO

from models.core.errors import GdlError
from models.toolkit.training import fit_resumable, optimize_resumable

# A small problem with optimizer state (Adam's moments): pull x towards a target.
PROBLEM = """
import keras, numpy as np, tensorflow as tf
target = tf.constant(np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4))
x = keras.Variable(np.zeros((3, 4), "float32"), name="x")
opt = keras.optimizers.Adam(learning_rate=0.05)

@tf.function
def step(i):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(x - target))
    opt.apply_gradients([(tape.gradient(loss, x), x)])
    return {"loss": loss}
"""


def _problem():
    scope: dict = {}
    exec(PROBLEM, scope)  # noqa: S102 (the test's own code)
    return scope["x"], scope["opt"], scope["step"]


def _run(ckpt, iterations=40, stop=None, key="k", progress=lambda *a: None, log=lambda m: None, fail_at=None):
    x, opt, compiled = _problem()

    def step(i):
        if i == fail_at:
            raise Interrupt
        return compiled(i)

    result = optimize_resumable(
        ckpt_dir=ckpt,
        fingerprint=key,
        variables={"x": x},
        optimizer=opt,
        step=step,
        iterations=iterations,
        checkpoint_every=5,
        should_stop=stop,
        progress=progress,
        log=log,
    )
    return x.numpy(), result


class Interrupt(Exception):
    pass


def test_interrupted_optimisation_resumes_to_the_same_result(tmp_path):
    straight, _ = _run(tmp_path / "a")
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", fail_at=17)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["iteration"] == 15  # the last checkpoint before the interruption
    logs: list[str] = []
    resumed, result = _run(tmp_path / "b", log=logs.append)
    assert result["resumed_from"] == 15 and result["iterations"] == 40
    assert any("resuming from iteration 15 of 40" in line for line in logs)
    np.testing.assert_allclose(resumed, straight, rtol=0, atol=1e-6)  # optimizer state restored too
    assert len(result["history"]["loss"]) == 40


def test_killed_optimisation_resumes_after_kill_9(tmp_path):
    script = tmp_path / "opt.py"
    ckpt = tmp_path / "ckpt"
    head = f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
    tail = textwrap.dedent(
        f"""
        from pathlib import Path
        from models.toolkit.training import optimize_resumable
        slow = float(sys.argv[1])
        def timed(i):
            time.sleep(slow)
            return step(i)
        optimize_resumable(ckpt_dir=Path({str(ckpt)!r}), fingerprint="k", variables={{"x": x}},
            optimizer=opt, step=timed, iterations=60, checkpoint_every=5,
            progress=lambda *a: None, log=print)
        """
    )
    script.write_text(head + PROBLEM + tail)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, str(script), "0.05"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = ckpt / "state.json"
        if state.exists() and json.loads(state.read_text())["iteration"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((ckpt / "state.json").read_text())["iteration"]
    assert 20 <= done < 60, "the process was killed mid-run"
    # Resumed here (what matters is what the killed process left on disk), and compared with an
    # uninterrupted run of the same problem.
    logs: list[str] = []
    x, opt, step = _problem()
    optimize_resumable(
        ckpt_dir=ckpt, fingerprint="k", variables={"x": x}, optimizer=opt, step=step,
        iterations=60, checkpoint_every=5, progress=lambda *a: None, log=logs.append,
    )  # fmt: skip
    assert f"resuming from iteration {done} of 60" in logs
    resumed = x.numpy()
    x, opt, step = _problem()
    optimize_resumable(
        ckpt_dir=tmp_path / "straight", fingerprint="k", variables={"x": x}, optimizer=opt, step=step,
        iterations=60, checkpoint_every=5, progress=lambda *a: None, log=lambda m: None,
    )  # fmt: skip
    np.testing.assert_allclose(resumed, x.numpy(), atol=1e-6)


def test_early_stop_is_recorded_and_not_undone_by_a_rerun(tmp_path):
    _, result = _run(tmp_path, stop=lambda m: m["loss"] < 0.2)
    assert result["stopped_early"] and result["iterations"] < 40
    again_x, again = _run(tmp_path, stop=lambda m: m["loss"] < 0.2)
    assert again["iterations"] == result["iterations"] and again["resumed_from"] == result["iterations"]


def test_a_checkpoint_with_another_fingerprint_is_not_resumed(tmp_path):
    _run(tmp_path, iterations=10)
    logs: list[str] = []
    _, result = _run(tmp_path, iterations=10, key="other", log=logs.append)
    assert result["resumed_from"] == 0
    assert any("starting over" in line for line in logs)


def test_progress_is_reported_with_the_total_and_at_the_end(tmp_path):
    seen: list[tuple[float, int]] = []
    _run(tmp_path, iterations=12, progress=lambda done, total, logs: seen.append((done, total)))
    assert seen[-1] == (12, 12)
    assert all(total == 12 for _, total in seen)


def test_non_finite_loss_stops_with_a_clear_error_keeping_the_last_checkpoint(tmp_path):
    import keras

    x = keras.Variable(np.ones(3, "float32"))

    def step(i):
        return {"loss": float("nan") if i == 7 else 1.0}

    with pytest.raises(
        GdlError,
        match="optimisation diverged at iteration 8: loss=nan; the checkpoint of iteration 5 is kept",
    ):
        optimize_resumable(
            ckpt_dir=tmp_path, fingerprint="k", variables={"x": x}, step=step, iterations=20,
            checkpoint_every=5, progress=lambda *a: None, log=lambda m: None,
        )  # fmt: skip
    assert json.loads((tmp_path / "state.json").read_text())["iteration"] == 5


def _tiny_fit(ckpt, epochs, callbacks=(), label=lambda epoch: 1.0):
    """fit_resumable on a one-Dense-layer model and 8 constant samples; `label(epoch)` is the
    target value of that epoch's data (NaN makes the loss NaN)."""
    import keras
    import tensorflow as tf

    def build():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    def data(epoch):
        x = np.ones((8, 2), "float32")
        y = np.full((8, 1), label(epoch), "float32")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    return fit_resumable(
        ckpt_dir=ckpt, fingerprint="k", epochs=epochs, build_model=build, train_data=data, val_data=None,
        samples_per_epoch=8, callbacks=list(callbacks), progress=lambda *a: None, log=lambda m: None,
    )  # fmt: skip


def test_fit_stops_on_a_nan_loss_naming_the_epoch(tmp_path):
    with pytest.raises(GdlError, match="training diverged in epoch 2: loss=nan"):
        _tiny_fit(tmp_path, 3, label=lambda epoch: np.nan if epoch == 1 else 1.0)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1


def test_a_callback_that_stops_training_stops_it_for_good(tmp_path):
    import keras

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                self.model.stop_training = True

    def fit(callbacks):
        return _tiny_fit(tmp_path, 5, callbacks)

    first = fit([StopAfterTwo()])
    assert first["stopped_early"] and len(first["history"]["loss"]) == 2
    again = fit([])
    assert again["resumed_from"] == 2 and len(again["history"]["loss"]) == 2


def _two_player(ckpt, fail_at=None):
    """Two networks, each with its own optimizer (a GAN's shape): both optimizers' slots resume."""
    import keras
    import tensorflow as tf

    from models.toolkit.training import model_variables

    keras.utils.set_random_seed(3)
    layers = [
        keras.Input((4,)),
        keras.layers.Dense(3),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.5, seed=1),
    ]
    a = keras.Sequential(layers, name="a")
    b = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="b")
    opt_a, opt_b = keras.optimizers.Adam(0.05), keras.optimizers.RMSprop(0.01)
    opt_a.build(a.trainable_variables)
    opt_b.build(b.trainable_variables)
    data = np.random.default_rng(0).normal(size=(20, 8, 4)).astype("float32")

    @tf.function
    def compiled(x):
        with tf.GradientTape(persistent=True) as tape:
            y = b(a(x, training=True))
            loss_b = tf.reduce_mean(tf.square(y - 1.0))
            loss_a = -loss_b
        opt_b.apply_gradients(
            zip(tape.gradient(loss_b, b.trainable_variables), b.trainable_variables, strict=True)
        )
        opt_a.apply_gradients(
            zip(tape.gradient(loss_a, a.trainable_variables), a.trainable_variables, strict=True)
        )
        return {"loss_a": loss_a, "loss_b": loss_b}

    def step(i):
        if i == fail_at:
            raise Interrupt
        return compiled(data[int(i)])

    variables = model_variables(a=a, b=b)
    optimize_resumable(
        ckpt_dir=ckpt,
        fingerprint="k",
        variables=variables,
        optimizer=[opt_a, opt_b],
        step=step,
        iterations=20,
        checkpoint_every=5,
        progress=lambda *a: None,
        log=lambda m: None,
    )
    return {k: v.numpy() for k, v in variables.items()} | {
        f"slot{i}": v.numpy() for i, v in enumerate([*opt_a.variables, *opt_b.variables])
    }


def test_two_networks_with_two_optimizers_resume_to_the_same_weights(tmp_path):
    straight = _two_player(tmp_path / "a")
    assert any("/" in k and k.startswith("a/") for k in straight)  # batch-norm statistics included
    assert "a/seed00" in straight  # the dropout masks after a resume are the uninterrupted run's
    with pytest.raises(Interrupt):
        _two_player(tmp_path / "b", fail_at=12)
    resumed = _two_player(tmp_path / "b")
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=0, atol=1e-6, err_msg=name)


def test_a_checkpoint_that_finds_no_room_is_one_line_leaves_no_partial_file_and_resumes(tmp_path):
    """A real failing write: from epoch 2 on, RLIMIT_FSIZE stops files at 1 kB (EFBIG, where a
    full disk gives ENOSPC). The epoch-2 checkpoint fails in one line, leaves no hidden partial
    file, state.json still names epoch 1's, and a run with room resumes from it."""
    import resource

    import keras

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)

    class DiskFillsUp(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))

    def fit(callbacks):
        return _tiny_fit(tmp_path, 3, callbacks)

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises(GdlError) as caught:
            fit([DiskFillsUp()])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(caught.value) == f"cannot write {tmp_path / 'epoch-0002.keras'}: file size limit reached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.keras", "state.json"]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
    again = fit([])
    assert again["resumed_from"] == 1 and len(again["history"]["loss"]) == 3
