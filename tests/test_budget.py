"""Time budgets (`max_train_minutes`): a training loop that spends its budget checkpoints and stops
with BudgetReached, the next run resumes to the result of an uninterrupted one; the budget is not
part of what a step computes (not in its cache key); the nightly's summary says who stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_training import _problem

from flows.summary import render_summary, summary_row
from models.core.budget import Budget
from models.core.errors import BudgetReached
from models.core.registry import get
from models.toolkit.training import fit_resumable, optimize_resumable


class Clock:
    """A clock that moves `tick` seconds each time it is read."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _optimise(ckpt, budget=None, iterations=40):
    x, opt, step = _problem()
    kwargs = {"budget": budget} if budget is not None else {}
    result = optimize_resumable(
        ckpt_dir=ckpt, fingerprint="k", variables={"x": x}, optimizer=opt, step=step,
        iterations=iterations, checkpoint_every=5, progress=lambda *a: None, log=lambda m: None, **kwargs,
    )  # fmt: skip
    return x.numpy(), result


def test_budget_is_spent_after_its_minutes_and_never_without_them():
    clock = Clock(10.0)  # each reading 10 s later
    budget = Budget(0.5, clock=clock)  # 30 s
    assert [budget.spent() for _ in range(4)] == [False, False, True, True]  # 10, 20, 30, 40 s in
    assert not any(Budget(None, clock=Clock(1e9)).spent() for _ in range(3))


def test_an_optimisation_stopped_at_its_budget_resumes_to_the_uninterrupted_result(tmp_path):
    straight, _ = _optimise(tmp_path / "straight")
    # 1 s per reading, 0.2 min = 12 s: spent at the 12th check (one per iteration), between
    # checkpoints (every 5).
    with pytest.raises(BudgetReached) as stopped:
        _optimise(tmp_path / "budget", Budget(0.2, clock=Clock(1.0)))
    assert (stopped.value.done, stopped.value.total, stopped.value.unit) == (12, 40, "iteration")
    assert str(stopped.value) == "stopped at its budget of 0.2 min after iteration 12 of 40 (checkpoint kept)"
    state = json.loads((tmp_path / "budget" / "state.json").read_text())
    assert state["iteration"] == 12 and not state["stopped"]  # a checkpoint where it stopped
    resumed, result = _optimise(tmp_path / "budget")  # the next run, no budget left to spend
    assert result["resumed_from"] == 12 and result["iterations"] == 40
    np.testing.assert_allclose(resumed, straight, rtol=0, atol=1e-6)


def test_each_run_makes_progress_however_small_its_budget(tmp_path):
    for done in (1, 2, 3):
        with pytest.raises(BudgetReached) as stopped:
            _optimise(tmp_path, Budget(1e-9, clock=Clock(1.0)), iterations=4)
        assert stopped.value.done == done
    _, result = _optimise(tmp_path, Budget(1e-9, clock=Clock(1.0)), iterations=4)
    assert result["iterations"] == 4  # the last iteration completes: no stop after it


def test_fit_stopped_at_its_budget_keeps_the_epoch_and_resumes_to_the_same_weights(tmp_path):
    import keras
    import tensorflow as tf

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        return model

    def data(epoch):
        rng = np.random.default_rng(epoch)
        x = rng.normal(size=(16, 2)).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).batch(4)

    def fit(ckpt, budget=None):
        kwargs = {"budget": budget} if budget is not None else {}
        return fit_resumable(
            ckpt_dir=ckpt, fingerprint="k", epochs=4, build_model=build, train_data=data, val_data=None,
            samples_per_epoch=16, progress=lambda *a: None, log=lambda m: None, **kwargs,
        )  # fmt: skip

    fit(tmp_path / "straight")
    with pytest.raises(BudgetReached) as stopped:
        fit(tmp_path / "budget", Budget(1e-9, clock=Clock(1.0)))
    assert (stopped.value.done, stopped.value.total, stopped.value.unit) == (1, 4, "epoch")
    assert json.loads((tmp_path / "budget" / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "budget" / "model.keras").exists()  # not finished
    result = fit(tmp_path / "budget")
    assert result["resumed_from"] == 1 and len(result["history"]["loss"]) == 4
    resumed = keras.models.load_model(tmp_path / "budget" / "model.keras").get_weights()
    straight = keras.models.load_model(tmp_path / "straight" / "model.keras").get_weights()
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_the_budget_is_not_part_of_the_cache_key_so_changing_it_resumes():
    from tasks.steps import step_key

    params = get("text_lstm").params_model().model_dump(mode="json")
    upstream = {"download": {"digest": "a"}, "vectorize": {"digest": "b"}}
    keys = {
        step_key("text_lstm", "train", {**params, "max_train_minutes": m}, upstream) for m in (None, 0.5, 600)
    }
    assert len(keys) == 1
    assert step_key("text_lstm", "train", {**params, "epochs": 3}, upstream) not in keys  # keys do change
    assert "max_train_minutes" not in get("text_lstm").params_model.fields_for_step("publish")


@pytest.mark.parametrize("bad", [0, -1, "ten", 1e9])
def test_a_budget_that_is_not_a_positive_number_of_minutes_is_refused(bad):
    from flows.config import resolve_params
    from models.core.errors import GdlError

    with pytest.raises(GdlError, match=r"max_train_minutes"):
        resolve_params("text_lstm", "demo", {"text_lstm": {"max_train_minutes": bad}})


def test_the_summary_names_each_state_with_its_duration_quality_and_report():
    stop = BudgetReached(30.0, 3, 200, "step").summary()
    rows = [
        summary_row(
            "vae",
            75.0,
            {
                "quality": {"value": 0.2, "score": 0.81, "passed": True, "sentence": "s"},
                "published": "s3://b/vae/run",
            },
        ),
        summary_row("cyclegan", 1805.0, {"technique": "cyclegan", "incomplete": stop, "message": "m"}),
        summary_row("dcgan", 3.0, error="invalid parameters: dcgan.steps: ..."),
    ]
    assert [r["state"] for r in rows] == ["completed", "incomplete", "failed"]
    table = render_summary(rows)
    assert table.startswith("1 completed, 1 incomplete, 1 failed")
    assert "| `vae` | completed | 1 min 15 s | ok (score 0.81) | s3://b/vae/run |" in table
    assert "| `cyclegan` | incomplete | 30 min 05 s |" in table
    assert "stopped at its budget of 30 min after step 3 of 200 (checkpoint kept); resumes next run" in table
    assert "| `dcgan` | failed | 0 min 03 s |" in table and "invalid parameters" in table
