"""The adversarial trainer every GAN shares.

A GAN here is two Keras models, a generator G (latent z, and a label for a conditional GAN ->
image in tanh range) and a discriminator or critic D (image, and label -> one score), and a
`Recipe`: the loss (`bce`: sigmoid D, binary cross-entropy, Goodfellow et al.; `wasserstein`:
linear critic, mean D(fake) - mean D(real), Arjovsky et al.), `n_critic` D updates per G update,
label noise (Chollet 8.5: "an important trick"), weight clipping (WGAN) or a gradient penalty
(WGAN-GP, Gulrajani et al.).

One compiled step (`make_train_step`) does the `n_critic` D updates and one G update with an
explicit variable list per optimiser: Keras 3 fixes a model's trainable variables at `compile()`,
so the books' "freeze D, compile the combined model, train_on_batch" is fragile (keras issue
20474). `train_adversarial` runs it through `models.toolkit.training.optimize_resumable`, which brings
checkpoints every N steps, resume after kill -9 to the same weights, a clear stop on NaN/inf
(keeping the last good checkpoint) and the progress bar. Everything random in a step (which real
images, the latents, the label noise, the penalty's interpolation weights) is drawn on the host
from (seed, step), so a resumed run sees exactly the batches an uninterrupted one would; the
dropout layers' seed state is checkpointed with the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.core.budget import NO_BUDGET, Budget
from models.core.errors import GdlError

LOSSES = ("bce", "wasserstein")
GP_EPSILON = 1e-12  # inside the gradient norm's square root: its gradient at 0 would be NaN


@dataclass(frozen=True)
class Recipe:
    """How the two networks are trained against each other (everything but the networks)."""

    latent_dim: int
    loss: str = "bce"
    n_critic: int = 1
    label_noise: float = 0.0  # bce only: targets move up to this far toward the other class
    clip_value: float = 0.0  # > 0: D's weights clipped to [-clip_value, clip_value] after each update
    gp_weight: float = 0.0  # > 0: gradient penalty weight (lambda)
    num_classes: int = 0  # > 0: conditional GAN, both networks take a label

    def __post_init__(self):
        if self.latent_dim <= 0:
            raise GdlError(f"latent_dim must be > 0 (got {self.latent_dim})")
        if self.loss not in LOSSES:
            raise GdlError(f"unknown GAN loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.n_critic < 1:
            raise GdlError(f"n_critic must be >= 1 (got {self.n_critic})")
        if self.label_noise < 0 or self.clip_value < 0 or self.gp_weight < 0 or self.num_classes < 0:
            raise GdlError("label_noise, clip_value, gp_weight and num_classes must be >= 0")


def make_optimizer(kind: str, learning_rate: float, beta_1: float, beta_2: float, clipvalue: float | None):
    import keras

    if kind == "adam":
        return keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, clipvalue=clipvalue)
    if kind == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, clipvalue=clipvalue)
    raise GdlError(f"unknown optimizer {kind!r}; valid: adam, rmsprop")


def check_images(x: np.ndarray, y: np.ndarray | None, what: str, num_classes: int = 0) -> None:
    """Training images must be float32 NHWC in tanh range; labels (cGAN) ints in [0, num_classes)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] not in (1, 3):
        shape = getattr(x, "shape", None)
        raise GdlError(f"{what}: expected images of shape (N, H, W, 1 or 3), got {shape}")
    if x.dtype != np.float32:
        raise GdlError(f"{what}: expected float32 images in [-1, 1], got {x.dtype}")
    if len(x) == 0:
        raise GdlError(f"{what}: no images")
    if not np.isfinite(x).all() or x.min() < -1.0 - 1e-5 or x.max() > 1.0 + 1e-5:
        raise GdlError(f"{what}: images must be finite and in [-1, 1] (tanh range)")
    if num_classes:
        if y is None or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise GdlError(f"{what}: a conditional GAN needs one integer label per image")
        if y.min() < 0 or y.max() >= num_classes:
            raise GdlError(
                f"{what}: labels must be in [0, {num_classes}) for num_classes={num_classes} "
                f"(got {int(y.min())}..{int(y.max())})"
            )


# ---------------------------------------------------------------------------------------------
# The compiled step


def _inputs(image_or_z, labels, recipe: Recipe):
    return [image_or_z, labels] if recipe.num_classes else image_or_z


def make_train_step(G, D, g_opt, d_opt, recipe: Recipe, jit_compile: bool = False, replicas=None):
    """One compiled GAN step: `recipe.n_critic` updates of D, then one of G.

    Its argument is a `batch(...)` dict (host-drawn randomness, see `draw_batch`); it returns the
    step's scalar metrics: d_loss and g_loss (the last D update's, and G's), D's mean score on
    real and on generated images in that last D update, and the gradient penalty when there is one.

    `replicas` (models.toolkit.distribute.Replicas with a strategy; G, D and both optimizers
    created under its scope): each replica updates on its shard of the global batch (`shard_batch`),
    every mean is taken over the GLOBAL batch (a replica's sum / batch size) and the optimizers
    sum the replicas' gradients, so one step is the one-device step on the whole batch; metrics
    are summed over the replicas into those global means. Weight clipping runs after each D
    update, on the mirrored variables.
    """
    import keras
    import tensorflow as tf

    bce = recipe.loss == "bce"
    strategy = replicas.strategy if replicas is not None else None
    if strategy is None:
        average = tf.reduce_mean
    else:

        def average(values):
            # This replica's share of the global batch's mean (the replicas' shares sum to it).
            global_batch = tf.cast(tf.size(values) * strategy.num_replicas_in_sync, values.dtype)
            return tf.reduce_sum(values) / global_batch

    def d_objective(real_score, fake_score, noise):
        if bce:
            n = tf.shape(real_score)[0]
            # Noisy targets (Chollet 8.5), moved toward the other class so they stay in [0, 1].
            real_t = 1.0 - recipe.label_noise * noise[:n, None]
            fake_t = recipe.label_noise * noise[n:, None]
            return 0.5 * (
                average(keras.losses.binary_crossentropy(real_t, real_score))
                + average(keras.losses.binary_crossentropy(fake_t, fake_score))
            )
        return average(fake_score) - average(real_score)

    def g_objective(fake_score):
        if bce:  # the non-saturating loss: G wants D to call its images real
            return average(keras.losses.binary_crossentropy(tf.ones_like(fake_score), fake_score))
        return -average(fake_score)

    def gradient_penalty(real, fake, alpha, labels):
        # alpha: one uniform weight per sample (not per pixel), broadcast over the image.
        mixed = real + alpha * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch(mixed)
            score = D(_inputs(mixed, labels, recipe), training=True)
        grads = tape.gradient(score, mixed)
        norm = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + GP_EPSILON)
        return average(tf.square(norm - 1.0))

    def d_update(batch, k):
        real, labels, z = batch["real"][k], batch["labels"][k], batch["z_d"][k]
        noise, alpha = batch["noise"][k], batch["alpha"][k]
        out = {}
        with tf.GradientTape() as tape:
            fake = G(_inputs(z, labels, recipe), training=True)
            real_score = D(_inputs(real, labels, recipe), training=True)
            fake_score = D(_inputs(fake, labels, recipe), training=True)
            d_loss = d_objective(real_score, fake_score, noise)
            if recipe.gp_weight:
                gp = gradient_penalty(real, fake, alpha, labels)
                out["gradient_penalty"] = gp
                d_loss += recipe.gp_weight * gp
        out.update(d_loss=d_loss, d_real=average(real_score), d_fake=average(fake_score))
        grads = tape.gradient(d_loss, D.trainable_variables)
        d_opt.apply_gradients(zip(grads, D.trainable_variables, strict=True))
        return out

    def clip():
        if recipe.clip_value:
            for v in D.trainable_variables:
                v.assign(tf.clip_by_value(v, -recipe.clip_value, recipe.clip_value))

    def g_update(batch):
        z, labels = batch["z_g"], batch["g_labels"]
        with tf.GradientTape() as tape:
            fake = G(_inputs(z, labels, recipe), training=True)
            g_loss = g_objective(D(_inputs(fake, labels, recipe), training=True))
        grads = tape.gradient(g_loss, G.trainable_variables)
        g_opt.apply_gradients(zip(grads, G.trainable_variables, strict=True))
        return g_loss

    def run(fn, batch):
        if strategy is None:
            return fn(batch)
        per_replica = strategy.run(fn, args=(batch,))
        return tf.nest.map_structure(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), per_replica
        )

    # XLA compiles the one-device step; with replicas the step runs uncompiled (train_adversarial
    # says so): XLA does not compile a step whose optimizers all-reduce across devices.
    @tf.function(jit_compile=jit_compile and strategy is None)
    def train_step(batch):
        out = {}
        for k in range(recipe.n_critic):
            d = run(lambda b, k=k: d_update(b, k), batch)
            clip()
        g_loss = run(g_update, batch)
        if "gradient_penalty" in d:
            out["gradient_penalty"] = d["gradient_penalty"]
        out.update(d_loss=d["d_loss"], g_loss=g_loss, d_real=d["d_real"], d_fake=d["d_fake"])
        return out

    if strategy is None:
        return train_step
    return lambda batch: train_step(shard_batch(batch, strategy))


def shard_batch(batch: Mapping[str, np.ndarray], strategy) -> Any:
    """A `draw_batch` dict split into equal per-replica shards along the batch axis (axis 1 of
    the per-D-update arrays, 0 of G's), so the replicas together see exactly the global batch
    and its randomness: the label noise (real half, then generated half) is split half by half."""
    from models.toolkit.distribute import shard

    n = strategy.num_replicas_in_sync
    k = batch["noise"].shape[0]

    def one(ctx) -> dict[str, np.ndarray]:
        r = ctx.replica_id_in_sync_group
        out = {name: shard(batch[name], r, n, axis=1) for name in ("real", "labels", "z_d", "alpha")}
        noise = shard(batch["noise"].reshape(k, 2, -1), r, n, axis=2)
        out["noise"] = noise.reshape(k, -1)
        out.update({name: shard(batch[name], r, n, axis=0) for name in ("z_g", "g_labels")})
        return out

    return strategy.experimental_distribute_values_from_function(one)


def draw_batch(
    x: np.ndarray, y: np.ndarray | None, recipe: Recipe, batch_size: int, seed: int, step: int
) -> dict[str, np.ndarray]:
    """Everything random in step `step`, drawn from (seed, step) alone: real images (with
    replacement, as the books' randint), latents for D's and G's updates, label noise, the
    penalty's per-sample interpolation weights, and labels for generated images (cGAN)."""
    rng = np.random.default_rng([seed, step])
    k, b = recipe.n_critic, batch_size
    idx = rng.integers(0, len(x), (k, b))
    labels = y[idx].astype(np.int32) if recipe.num_classes else np.zeros((k, b), np.int32)
    classes = max(recipe.num_classes, 1)
    return {
        "real": x[idx],
        "labels": labels,
        "z_d": rng.standard_normal((k, b, recipe.latent_dim), dtype=np.float32),
        "noise": rng.random((k, 2 * b), dtype=np.float32),
        "alpha": rng.random((k, b, 1, 1, 1), dtype=np.float32),
        "z_g": rng.standard_normal((b, recipe.latent_dim), dtype=np.float32),
        "g_labels": rng.integers(0, classes, b).astype(np.int32),
    }


def fixed_latents(seed: int, count: int, latent_dim: int) -> np.ndarray:
    """The evaluation latents: the same for every snapshot of a run (and across runs with one
    seed), so grids at different steps show the same points of latent space."""
    return np.random.default_rng([seed, 0xE7A1]).standard_normal((count, latent_dim), dtype=np.float32)


def generate(G, z: np.ndarray, labels: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
    """G's images for these latents (and labels), float in [-1, 1], in batches."""
    out = []
    for i in range(0, len(z), batch):
        inputs = z[i : i + batch] if labels is None else [z[i : i + batch], labels[i : i + batch]]
        out.append(np.asarray(G(inputs, training=False)))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """tanh-range images -> uint8 (N, H, W) greyscale or (N, H, W, 3)."""
    u8 = np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return u8[..., 0] if u8.shape[-1] == 1 else u8


def train_adversarial(
    *,
    G,
    D,
    g_opt,
    d_opt,
    recipe: Recipe,
    x: np.ndarray,
    y: np.ndarray | None,
    batch_size: int,
    steps: int,
    seed: int,
    ckpt_dir: Path,
    fingerprint: str,
    checkpoint_every: int,
    snapshot_every: int = 0,
    snapshot: Callable[[int], None] | None = None,
    progress: Callable[[float, int, Mapping[str, float]], None] = lambda *a: None,
    log: Callable[[str], None] = print,
    jit_compile: bool = False,
    budget: Budget = NO_BUDGET,
    replicas=None,
) -> dict[str, Any]:
    """Train G against D for `steps` steps, resumably (see the module docstring), within `budget`. With
    `replicas` (models.toolkit.distribute.data_parallel; G, D and the optimizers created under
    its scope) each step is split between the replicas (`make_train_step`)."""
    from models.toolkit.distribute import synchronize_batch_norm
    from models.toolkit.training import model_variables, optimize_resumable

    check_images(x, y, "training images", recipe.num_classes)
    if batch_size < 1 or steps < 0:
        raise GdlError(f"batch_size must be >= 1 and steps >= 0 (got {batch_size}, {steps})")
    distributed = replicas is not None and replicas.strategy is not None
    if distributed:
        if batch_size % replicas.count:
            raise GdlError(f"batch_size={batch_size} is not divisible by replicas={replicas.count}")
        # Batch statistics of the global batch: the networks one device would train.
        synchronize_batch_norm(G, D)
        if jit_compile:
            log(f"jit_compile ignored: XLA does not compile a step split between {replicas.count} replicas")
    # Each optimiser is built on the variables it trains, so both can be checkpointed.
    with replicas.scope() if distributed else contextlib.nullcontext():
        g_opt.build(G.trainable_variables)
        d_opt.build(D.trainable_variables)
    train_step = make_train_step(G, D, g_opt, d_opt, recipe, jit_compile, replicas if distributed else None)

    def step(i) -> Mapping[str, Any]:
        return train_step(draw_batch(x, y, recipe, batch_size, seed, int(i)))

    return optimize_resumable(
        ckpt_dir=ckpt_dir,
        fingerprint=fingerprint,
        variables=model_variables(generator=G, discriminator=D),
        optimizer=[g_opt, d_opt],
        step=step,
        iterations=steps,
        checkpoint_every=checkpoint_every,
        snapshot_every=snapshot_every,
        snapshot=snapshot,
        progress=progress,
        log=log,
        label="step",
        budget=budget,
        replicas=replicas,
    )


# =============================================================================================
# The shared technique: params, the four steps and the report of every GAN variant
