"""Untargeted attacks on a batch of photos: FGSM (one step of epsilon along the sign of the loss
gradient, Goodfellow et al. 2015) and PGD (Madry et al. 2018: steps of a fraction of epsilon,
projected back into the L-infinity ball and the displayable range), and the sweep over epsilons
the adversarial technique reports."""

from __future__ import annotations

import numpy as np

from models.toolkit.backbones import pixel_bounds, preprocess

SWEEP_BATCH = 16  # photos per batch of the sweep (a folder of your own can be large)


def sign_step(model, backbone: str, jit_compile: bool):
    """A compiled untargeted step for a batch: x + alpha * sign(grad CE(clean label)), projected
    into the epsilon ball around x0 and the displayable range; also the predictions at x."""
    import keras
    import tensorflow as tf

    low, high = (tf.constant(b.reshape(1, 1, 1, 3), tf.float32) for b in pixel_bounds(backbone))

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def step(x, x0, labels, epsilon, alpha):
        with tf.GradientTape() as tape:
            tape.watch(x)
            probs = model(x, training=False)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probs))
        moved = x + alpha * tf.sign(tape.gradient(loss, x))
        moved = tf.clip_by_value(moved, tf.maximum(x0 - epsilon, low), tf.minimum(x0 + epsilon, high))
        return moved, tf.argmax(probs, axis=-1)

    return step


def fool(step, model, x0, labels, eps: float, pgd_steps: int, ratio: float):
    """Which photos of one batch FGSM fools, and which PGD (from the FGSM point) fools."""
    e = np.float32(eps)
    x = step(x0, x0, labels, e, e)[0].numpy()  # FGSM: one step of epsilon
    fooled_fgsm = fooled = None
    for _ in range(pgd_steps):
        moved, preds = step(x, x0, labels, e, np.float32(eps * ratio))
        now = preds.numpy() != labels
        fooled_fgsm = now if fooled_fgsm is None else fooled_fgsm
        fooled = now if fooled is None else fooled | now
        # A photo keeps the first iterate that fools the network: PGD never undoes FGSM.
        x = np.where(fooled[:, None, None, None], x, moved.numpy())
    return fooled_fgsm, fooled | (np.asarray(model(x, training=False)).argmax(-1) != labels)


def sweep(model, backbone: str, photos: np.ndarray, epsilons, pgd_steps: int, ratio: float, jit: bool):
    """Per epsilon: which photos FGSM and PGD fool (top-1 changed from the clean prediction)."""
    step = sign_step(model, backbone, jit)
    batches = [
        preprocess(backbone, photos[i : i + SWEEP_BATCH]).astype(np.float32)
        for i in range(0, len(photos), SWEEP_BATCH)
    ]
    labels = [np.asarray(model(x0, training=False)).argmax(-1) for x0 in batches]
    rows = []
    for eps in epsilons:
        found = [
            fool(step, model, x0, y, eps, pgd_steps, ratio) for x0, y in zip(batches, labels, strict=True)
        ]
        fgsm = np.concatenate([f for f, _ in found])
        pgd = np.concatenate([p for _, p in found])
        rows.append(
            {
                "epsilon": float(eps),
                "fgsm": fgsm.tolist(),
                "pgd": pgd.tolist(),
                "fgsm_success": float(fgsm.mean()),
                "pgd_success": float(pgd.mean()),
            }
        )
    return np.concatenate(labels).tolist(), rows
