"""CycleGAN: the history pool of generated images, and a killed training run that resumes to
the same weights, optimizer state and pool as an uninterrupted one (the technique's own train
step, through every stage, runs in tests/test_techniques.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_pix2pix import shapes_photo

from models.core.images import save_png
from models.core.registry import StepContext, get
from models.techniques.translation.common import load_domains
from models.techniques.translation.cyclegan import TINY, CycleGANParams, HistoryPool


def _query(pool: HistoryPool, fakes: np.ndarray, step: int) -> np.ndarray:
    import tensorflow as tf

    return pool.query(tf.constant(fakes), tf.constant([7, step], tf.int64)).numpy()


def test_the_history_pool_fills_then_swaps_about_half_of_the_new_fakes_for_older_ones():
    pool = HistoryPool(4, (2, 2, 3), "pool")
    first = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 2, 3), np.float32)
    assert np.array_equal(_query(pool, first, 0), first), "while it fills, the new fakes pass"
    assert int(pool.count.numpy()) == 4 and np.array_equal(pool.images.numpy(), first)
    swapped = 0
    for step in range(1, 26):
        fakes = np.full((4, 2, 2, 3), 100 + step, np.float32)
        shown = _query(pool, fakes, step)
        old = shown[:, 0, 0, 0] != 100 + step
        swapped += int(old.sum())
        # What is shown instead of a new fake is an older one, now replaced by it in the pool.
        assert set(shown[old, 0, 0, 0]) <= set(range(4)) | set(range(101, 100 + step))
    assert 25 <= swapped <= 75, "half of the 100 fakes, give or take"
    # The same seed and steps draw the same coins: a resumed run sees the same pool.
    again = HistoryPool(4, (2, 2, 3), "again")
    _query(again, first, 0)
    for step in range(1, 26):
        _query(again, np.full((4, 2, 2, 3), 100 + step, np.float32), step)
    assert np.array_equal(again.images.numpy(), pool.images.numpy())


def _state(gan) -> dict[str, np.ndarray]:
    """Everything a CycleGAN run carries from step to step: weights, pools, optimizer slots."""
    found = {name: v.numpy() for name, v in gan.variables.items()}
    for k, opt in (("g_opt", gan.g_opt), ("d_opt", gan.d_opt)):
        found.update({f"{k}/{i}": v.numpy() for i, v in enumerate(opt.variables)})
    return found


def _assign(gan, state: dict[str, np.ndarray]) -> None:
    for name, v in gan.variables.items():
        v.assign(state[name])
    for k, opt in (("g_opt", gan.g_opt), ("d_opt", gan.d_opt)):
        for i, v in enumerate(opt.variables):
            v.assign(state[f"{k}/{i}"])


def test_a_killed_training_run_resumes_to_the_same_weights_optimizer_state_and_pool(tmp_path, monkeypatch):
    """The compiled step is traced once (seconds on a CPU): between runs the networks go back
    to where a new process would build them, so anything the checkpoint missed (the pools, an
    optimizer slot) would be lost and the resumed run would end elsewhere."""
    import tensorflow as tf

    from models.techniques.translation.cyclegan import CycleGAN, batches, make_train_step
    from models.toolkit.training import optimize_resumable

    monkeypatch.setattr("models.toolkit.training.PROGRESS_EVERY", 0.0)
    t = get("cyclegan")
    photos, proc = tmp_path / "photos", tmp_path / "proc"
    photos.mkdir()
    proc.mkdir()
    for i in range(2):
        save_png(photos / f"p{i}.png", shapes_photo(i))
    # A pool of 3 with 2 fakes a step: full after step 2, swapping in the steps after the kill.
    p = CycleGANParams(**{**t.demo_overrides, **TINY})
    t.vectorize(p, StepContext({}, proc, inputs={"data": photos}))
    domains = load_domains(proc)
    gan = CycleGAN(p)
    train_step = make_train_step(gan, p)
    start = _state(gan)

    def step(i):
        a, b = batches(domains, p, int(i))
        return train_step(tf.constant(a), tf.constant(b), tf.constant(i, tf.int64))

    class Killed(Exception):
        pass

    def kill(done, total, logs):
        if done == 3:  # reported before step 3 is checkpointed: the checkpoint of step 2 is kept
            raise Killed

    def run(ckpt, **kw):
        ckpt.mkdir(exist_ok=True)
        return optimize_resumable(
            ckpt_dir=ckpt,
            fingerprint="k",
            variables=gan.variables,
            optimizer=[gan.g_opt, gan.d_opt],
            step=step,
            iterations=4,
            checkpoint_every=2,
            label="step",
            **{"progress": lambda *a: None, "log": lambda m: None, **kw},
        )

    run(tmp_path / "straight")
    straight = _state(gan)
    assert int(straight["pool_a/count"]) == 3
    _assign(gan, start)
    with pytest.raises(Killed):
        run(tmp_path / "killed", progress=kill)
    _assign(gan, start)  # a new process: the networks as built, empty pools, fresh optimizers
    logs: list[str] = []
    result = run(tmp_path / "killed", log=logs.append)
    assert result["resumed_from"] == 2 and "resuming from step 2 of 4" in logs
    resumed = _state(gan)
    assert not np.array_equal(resumed["pool_a/images"], start["pool_a/images"])
    for name, value in straight.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
