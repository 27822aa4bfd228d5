"""The VAE: its loss terms, manifold grids, outputs of its real steps, and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_steps, steps_in_own_project

from models.core.errors import GdlError
from models.techniques.vae.networks import build_vae, kl_divergence, reconstruction_loss
from models.techniques.vae.plots import grid_axis, manifold_latents, tile
from models.techniques.vae.technique import MANIFOLD, SAMPLES, SCATTER, VAEParams


def test_loss_terms_match_their_closed_forms():
    mean = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
    log_var = np.array([[0.0, 0.0], [np.log(4.0), 0.0]], np.float32)
    # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - ln s^2) / 2 per dimension.
    expected = [0.0, (4 + 1 - 1 - math.log(4)) / 2 + (1 + 4 - 1 - 0) / 2]
    np.testing.assert_allclose(np.asarray(kl_divergence(mean, log_var)), expected, rtol=1e-5)
    x = np.array([[[[1.0], [0.0]], [[0.5], [1.0]]]], np.float32)  # one 2x2 image
    p = np.array([[[[0.9], [0.2]], [[0.5], [0.7]]]], np.float32)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum()
    np.testing.assert_allclose(np.asarray(reconstruction_loss(x, p)), [bce], rtol=1e-5)


def test_manifold_grids_follow_the_books():
    # Chollet: norm.ppf(linspace(0.05, 0.95, 15)); Vasilev: linspace(-4, 4, 15).
    from scipy.stats import norm

    np.testing.assert_allclose(grid_axis("ppf", 15), norm.ppf(np.linspace(0.05, 0.95, 15)), rtol=1e-9)
    assert grid_axis("ppf", 15)[0] == pytest.approx(-1.6449, abs=1e-4)
    np.testing.assert_allclose(grid_axis("linear", 15), np.linspace(-4, 4, 15))
    z = manifold_latents("linear", 3, 4).reshape(3, 3, 4)
    assert z[0, 0, :2].tolist() == [-4, 4] and z[2, 2, :2].tolist() == [4, -4]  # z[1] grows upwards
    assert (z[..., 2:] == 0).all()  # further dimensions at the prior's mean
    images = np.arange(4 * 2 * 2).reshape(4, 2, 2, 1)
    assert tile(images, 2)[:, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    return steps_in_own_project(tmp_path_factory, "vae")


@pytest.mark.slow
def test_tiny_vae_writes_scatter_manifold_elbo_terms_and_quality(vae_run):
    from models.core.images import load_image

    root, done = vae_run
    p = VAEParams(**done["params"])
    up = {k: root / v["dir"] for k, v in done["upstream"].items() if k != "download"}
    history = json.loads((up["train"] / "metrics.json").read_text())["history"]
    for term in ("reconstruction", "kl", "val_reconstruction", "val_kl"):  # reported separately
        assert len(history[term]) == p.epochs and all(math.isfinite(v) for v in history[term])
    assert history["loss"][-1] < history["loss"][0]
    manifold = load_image(up["sample"] / MANIFOLD, "L")
    assert manifold.shape == (28 * p.grid_size, 28 * p.grid_size)
    assert load_image(up["sample"] / SCATTER).shape[0] > 200
    summary = json.loads((up["sample"] / SAMPLES).read_text())
    # The ELBO is minus (reconstruction of a latent draw + KL), and every term is finite.
    assert summary["heldout_elbo"] == pytest.approx(
        -(summary["heldout_sampled_reconstruction"] + summary["heldout_kl"]), rel=1e-5
    )
    assert summary["heldout_kl"] > 0 and summary["heldout_reconstruction"] > 0
    # Real training digits are far closer to the held-out ones than two tiny epochs' samples (which
    # may be no better than the untrained decoder's: the demo-sized ranking is the next test).
    assert summary["reference_fid"] < 0.5 * summary["fid"] and summary["untrained_fid"] > 0, summary
    assert math.isfinite(summary["kid"])


@pytest.mark.slow
def test_fid_and_kid_rank_a_trained_vae_above_an_untrained_one(vae_run):
    """Each metric ranks a trained generator's samples above an untrained one's: a dense VAE
    trained for a few epochs here, against the same network untrained, scored in the features
    of the digits classifier the tiny run trained."""
    from models.techniques.vae.technique import CLASSIFIER
    from models.toolkit.imagesets import load_image_set
    from models.toolkit.quality import digits_extractor, load_classifier, quality_metrics

    root, done = vae_run
    up = {k: root / v["dir"] for k, v in done["upstream"].items() if k != "download"}
    x, _ = load_image_set(up["vectorize"], "train")
    x_held, _ = load_image_set(up["vectorize"], "heldout")
    p = VAEParams(variant="dense", hidden_units=256, learning_rate=3e-3, seed=3)
    untrained = build_vae(p, (28, 28, 1))
    trained = build_vae(p, (28, 28, 1))
    trained.fit(x, batch_size=16, epochs=6, verbose=0, shuffle=True)
    z = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    extract = digits_extractor(load_classifier(up["train"] / CLASSIFIER))
    kid = {"kid_subsets": 5, "kid_subset_size": 100}
    good = quality_metrics(x_held, np.asarray(trained.decoder(z)), extract, **kid)
    bad = quality_metrics(x_held, np.asarray(untrained.decoder(z)), extract, **kid)
    assert good["fid"] < 0.8 * bad["fid"] and good["kid"] < bad["kid"], (good, bad)


def test_bad_parameters_are_one_line_errors_naming_the_parameter(project):
    from flows.config import resolve_params

    with pytest.raises(GdlError, match=r"vae\.latent_dim") as err:
        resolve_params("vae", None, {"vae.latent_dim": 0})
    assert "\n" not in str(err.value)
    with pytest.raises(GdlError, match=r"vae\.variant.*'conv' or 'dense'"):
        resolve_params("vae", None, {"vae.variant": "gan"})
    with pytest.raises(GdlError, match="height and width must be even"):
        build_vae(VAEParams(), (27, 27, 1))


@pytest.mark.slow
def test_digits_of_the_wrong_shape_fail_before_training(project):
    from models.core.files import npz_bytes

    images = np.zeros((40, 32, 32), np.uint8)  # not MNIST's 28x28
    labels = np.arange(40, dtype=np.uint8) % 10
    arrays = {"x_train": images, "y_train": labels, "x_test": images[:10], "y_test": labels[:10]}
    source = project / "mine.npz"
    source.write_bytes(npz_bytes(arrays))
    with pytest.raises(GdlError, match=r"28x28x1 digits .*shape \(32, 32, 1\)"):
        run_steps("vae", source=str(source))
    assert not list((project / "data").glob("checkpoints/vae/*/model.keras"))


@pytest.mark.slow
def test_a_resumed_vae_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    """The optimizer state and the latent draws (the sampling layer's counter) are in every
    checkpoint: stopping after one epoch and resuming gives the same weights as no stop."""
    from models.techniques.vae.networks import load_vae
    from models.techniques.vae.technique import _batches
    from models.toolkit.training import FINAL, fit_resumable

    x = (np.random.default_rng(0).random((48, 28, 28, 1)) > 0.7).astype(np.float32)
    p = VAEParams(variant="dense", hidden_units=16, seed=1)

    def fit(folder, epochs):
        return fit_resumable(
            ckpt_dir=folder,
            fingerprint="same",
            epochs=epochs,
            build_model=lambda: build_vae(p, (28, 28, 1)),
            train_data=lambda epoch: _batches(x, 16, shuffle_seed=epoch),
            val_data=None,
            samples_per_epoch=len(x),
            progress=lambda *args: None,
            log=lambda message: None,
        )

    whole = fit(tmp_path / "whole", 2)
    fit(tmp_path / "resumed", 1)
    resumed = fit(tmp_path / "resumed", 2)
    assert resumed["resumed_from"] == 1
    # Equal up to the order of multi-threaded float sums on CPU (last digits of a float32); a
    # lost optimizer state or latent draw would differ in the first digits.
    np.testing.assert_allclose(resumed["history"]["loss"], whole["history"]["loss"], rtol=1e-5)
    for a, b in zip(
        load_vae(tmp_path / "whole" / FINAL).weights,
        load_vae(tmp_path / "resumed" / FINAL).weights,
        strict=True,
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_fresh_process_rerunning_train_on_a_complete_checkpoint_loads_it(vae_run):
    """`dvc repro` re-runs a train stage whose file changed but whose code version did not: a new
    process finds the complete checkpoint and must load it (the VAE's custom classes registered
    first), training nothing."""
    import subprocess

    from conftest import BIN

    root, done = vae_run
    up = {k: str(root / v["dir"]) for k, v in done["upstream"].items() if k != "download"}
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from models.core.registry import StepContext, get\n"
        "from models.techniques.vae.technique import VAEParams\n"
        "params, vectorize, train = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "p = VAEParams(**params)\n"
        "key = json.loads((Path(train) / 'state.json').read_text())['fingerprint']\n"
        "get('vae').train(p, StepContext({'vectorize': Path(vectorize)}, Path(train), key=key))\n"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-c", script, json.dumps(done["params"]), up["vectorize"], up["train"]],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from epoch" in result.stdout + result.stderr
