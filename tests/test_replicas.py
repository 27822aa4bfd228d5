"""Data-parallel training (`replicas`): two logical CPU devices train what one device trains,
resume like one, record the devices they used, and a batch that does not split is refused.

Logical devices can only be made before TensorFlow starts, so every run is a process of its own
(tests/replica_runs.py). Tolerance of the one-vs-two-replica comparison: relative 1e-5. The two
runs do the same arithmetic except the order of float32 summations (each replica sums its half
of the batch, then the halves are added), which moves a loss by about 1e-7 relative per step
(measured: at most about 2e-7 over 8 GAN steps, 2 LSTM epochs and 2 VAE epochs); a real difference (batch-norm
statistics of a half batch, noise drawn per replica, a loss averaged over the local batch so
the summed gradient doubles) moves them by 1e-3 or more from the first step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.core.errors import GdlError
from models.core.params import validate
from models.core.registry import get, techniques

RUNS = Path(__file__).resolve().parent / "replica_runs.py"
RELATIVE = 1e-5
TWO_CPUS = ["/device:CPU:0", "/device:CPU:1"]


def run(kind: str, out: Path, replicas: int, count: int, stop_at: int = 0) -> dict:
    args = [sys.executable, str(RUNS), kind, str(out), str(replicas), str(count)]
    result = subprocess.run(
        [*args, *([str(stop_at)] if stop_at else [])], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_trajectory(one: dict, two: dict, rel: float = RELATIVE) -> None:
    assert set(one) == set(two)
    for name, values in one.items():
        assert two[name] == pytest.approx(values, rel=rel, abs=1e-7), name


def test_gan_on_two_replicas_follows_the_one_device_trajectory(tmp_path):
    one = run("gan", tmp_path / "one", 1, 8)
    two = run("gan", tmp_path / "two", 2, 8)
    assert (one["replicas"], one["devices"], one["mirrored"]) == (1, ["/device:CPU:0"], 1)
    # Both devices hold the networks (mirrored variables), as the metrics say.
    assert (two["replicas"], two["devices"], two["mirrored"]) == (2, TWO_CPUS, 2)
    assert_same_trajectory(one["history"], two["history"])
    # Not a trivial match: the losses moved during training.
    assert len(set(one["history"]["g_loss"])) > 1


def test_gan_on_two_replicas_resumes_to_the_uninterrupted_run(tmp_path):
    straight = run("gan", tmp_path / "straight", 2, 8)
    ckpt = tmp_path / "resumed"
    assert run("gan", ckpt, 2, 8, stop_at=5) == {"interrupted": True}  # checkpoint at step 4
    resumed = run("gan", ckpt, 2, 8)
    assert resumed["resumed_from"] == 4 and resumed["devices"] == TWO_CPUS
    assert_same_trajectory(straight["history"], resumed["history"], rel=1e-6)


def test_text_lstm_fit_on_two_replicas_follows_one_device_and_resumes(tmp_path):
    one = run("text_lstm", tmp_path / "one", 1, 2)
    two = run("text_lstm", tmp_path / "two", 2, 2)
    assert (one["replicas"], one["devices"]) == (1, ["/device:CPU:0"])
    assert (two["replicas"], two["devices"]) == (2, TWO_CPUS)
    assert two["saved"] and two["parameters_loaded"] == two["parameters"]
    assert_same_trajectory(one["history"], two["history"])
    # Stopped after epoch 1, re-run in a fresh process: the checkpoint is loaded under the
    # strategy and training ends where the uninterrupted run did.
    assert run("text_lstm", tmp_path / "resumed", 2, 2, stop_at=1) == {"interrupted": True}
    resumed = run("text_lstm", tmp_path / "resumed", 2, 2)
    assert resumed["resumed_from_epoch"] == 1 and resumed["devices"] == TWO_CPUS
    assert_same_trajectory(two["history"], resumed["history"], rel=1e-6)


def test_vae_fit_on_two_replicas_follows_one_device(tmp_path):
    # The VAE's own train_step (loss scaled per replica) and sampling layer (each replica's
    # slice of the global batch's noise).
    one = run("vae", tmp_path / "one", 1, 2)
    two = run("vae", tmp_path / "two", 2, 2)
    assert (two["replicas"], two["devices"]) == (2, TWO_CPUS)
    losses = ("loss", "reconstruction", "kl")
    assert_same_trajectory({k: one["history"][k] for k in losses}, {k: two["history"][k] for k in losses})


@pytest.mark.parametrize(
    ("technique", "values", "message"),
    [
        ("gan", {"batch_size": 30, "replicas": 4}, "gan.batch_size=30 is not divisible by gan.replicas=4"),
        (
            "wgan_gp",
            {"batch_size": 9, "replicas": 2},
            "wgan_gp.batch_size=9 is not divisible by wgan_gp.replicas=2",
        ),
        (
            "text_lstm",
            {"batch_size": 64, "replicas": 3},
            "text_lstm.batch_size=64 is not divisible by text_lstm.replicas=3",
        ),
        # The VAE's null batch size is its variant's book value: conv 16.
        ("vae", {"variant": "conv", "replicas": 3}, "vae.batch_size=16 is not divisible by vae.replicas=3"),
    ],
)
def test_batch_not_divisible_by_replicas_is_refused_in_one_line(technique, values, message):
    with pytest.raises(GdlError) as err:
        validate(technique, get(technique).params_model, values)
    assert str(err.value) == message


def test_the_registry_says_which_techniques_train_on_replicas():
    parallel = {name for name, t in techniques().items() if t.supports_replicas}
    gans = {"gan", "dcgan", "dcgan_frogs", "cgan", "wgan", "wgan_gp", "face_gan"}
    assert gans | {"vae", "text_lstm"} <= parallel
    # Batch-1 translation and the image optimisations have no such field.
    for name in ("cyclegan", "pix2pix", "deepdream", "style_transfer", "adversarial"):
        assert name not in parallel
        assert "replicas" not in get(name).params_model.model_fields
