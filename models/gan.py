"""The adversarial trainer every GAN shares, and the shared pieces of a GAN technique.

A GAN here is two Keras models, a generator G (latent z, and a label for a conditional GAN ->
image in tanh range) and a discriminator or critic D (image, and label -> one score), and a
`Recipe`: the loss (`bce`: sigmoid D, binary cross-entropy, Goodfellow et al.; `wasserstein`:
linear critic, mean D(fake) - mean D(real), Arjovsky et al.), `n_critic` D updates per G update,
label noise (Chollet 8.5: "an important trick"), weight clipping (WGAN) or a gradient penalty
(WGAN-GP, Gulrajani et al.).

One compiled step (`make_train_step`) does the `n_critic` D updates and one G update with an
explicit variable list per optimiser: Keras 3 fixes a model's trainable variables at `compile()`,
so the books' "freeze D, compile the combined model, train_on_batch" is fragile (keras issue
20474). `train_adversarial` runs it through `models.training.optimize_resumable`, which brings
checkpoints every N steps, resume after kill -9 to the same weights, a clear stop on NaN/inf
(keeping the last good checkpoint) and the progress bar. Everything random in a step (which real
images, the latents, the label noise, the penalty's interpolation weights) is drawn on the host
from (seed, step), so a resumed run sees exactly the batches an uninterrupted one would; the
dropout layers' seed state is checkpointed with the weights.

The technique plumbing (params base class, vectorize/train/sample/report) is in the second half
of this module; each variant (models/gan_variants.py) declares its networks and defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from models.files import GdlError
from models.params import TechniqueParams, param
from models.registry import Input, StepContext, Technique, register
from models.report import Animation, Curve, Image, Note, Report, Section

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


def make_train_step(G, D, g_opt, d_opt, recipe: Recipe, jit_compile: bool = False):
    """One compiled GAN step: `recipe.n_critic` updates of D, then one of G.

    Its argument is a `batch(...)` dict (host-drawn randomness, see `draw_batch`); it returns the
    step's scalar metrics: d_loss and g_loss (the last D update's, and G's), D's mean score on
    real and on generated images in that last D update, and the gradient penalty when there is one.
    """
    import keras
    import tensorflow as tf

    bce = recipe.loss == "bce"

    def d_objective(real_score, fake_score, noise):
        if bce:
            n = tf.shape(real_score)[0]
            # Noisy targets (Chollet 8.5), moved toward the other class so they stay in [0, 1].
            real_t = 1.0 - recipe.label_noise * noise[:n, None]
            fake_t = recipe.label_noise * noise[n:, None]
            return 0.5 * (
                tf.reduce_mean(keras.losses.binary_crossentropy(real_t, real_score))
                + tf.reduce_mean(keras.losses.binary_crossentropy(fake_t, fake_score))
            )
        return tf.reduce_mean(fake_score) - tf.reduce_mean(real_score)

    def g_objective(fake_score):
        if bce:  # the non-saturating loss: G wants D to call its images real
            return tf.reduce_mean(keras.losses.binary_crossentropy(tf.ones_like(fake_score), fake_score))
        return -tf.reduce_mean(fake_score)

    def gradient_penalty(real, fake, alpha, labels):
        # alpha: one uniform weight per sample (not per pixel), broadcast over the image.
        mixed = real + alpha * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch(mixed)
            score = D(_inputs(mixed, labels, recipe), training=True)
        grads = tape.gradient(score, mixed)
        norm = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + GP_EPSILON)
        return tf.reduce_mean(tf.square(norm - 1.0))

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        out = {}
        for k in range(recipe.n_critic):
            real, labels = batch["real"][k], batch["labels"][k]
            with tf.GradientTape() as tape:
                fake = G(_inputs(batch["z_d"][k], labels, recipe), training=True)
                real_score = D(_inputs(real, labels, recipe), training=True)
                fake_score = D(_inputs(fake, labels, recipe), training=True)
                d_loss = d_objective(real_score, fake_score, batch["noise"][k])
                if recipe.gp_weight:
                    gp = gradient_penalty(real, fake, batch["alpha"][k], labels)
                    out["gradient_penalty"] = gp
                    d_loss += recipe.gp_weight * gp
            scores = (tf.reduce_mean(real_score), tf.reduce_mean(fake_score))
            grads = tape.gradient(d_loss, D.trainable_variables)
            d_opt.apply_gradients(zip(grads, D.trainable_variables, strict=True))
            if recipe.clip_value:
                for v in D.trainable_variables:
                    v.assign(tf.clip_by_value(v, -recipe.clip_value, recipe.clip_value))
        with tf.GradientTape() as tape:
            fake = G(_inputs(batch["z_g"], batch["g_labels"], recipe), training=True)
            g_loss = g_objective(D(_inputs(fake, batch["g_labels"], recipe), training=True))
        grads = tape.gradient(g_loss, G.trainable_variables)
        g_opt.apply_gradients(zip(grads, G.trainable_variables, strict=True))
        out.update(d_loss=d_loss, g_loss=g_loss, d_real=scores[0], d_fake=scores[1])
        return out

    return train_step


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
) -> dict[str, Any]:
    """Train G against D for `steps` steps, resumably (see the module docstring)."""
    from models.training import model_variables, optimize_resumable

    check_images(x, y, "training images", recipe.num_classes)
    if batch_size < 1 or steps < 0:
        raise GdlError(f"batch_size must be >= 1 and steps >= 0 (got {batch_size}, {steps})")
    # Each optimiser is built on the variables it trains, so both can be checkpointed.
    g_opt.build(G.trainable_variables)
    d_opt.build(D.trainable_variables)
    train_step = make_train_step(G, D, g_opt, d_opt, recipe, jit_compile)

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
    )


# =============================================================================================
# The shared technique: params, the four steps and the report of every GAN variant


class GanParams(TechniqueParams):
    """Fields every GAN technique has; a variant's subclass sets the book's values as defaults,
    its technique's NAME and SUMMARY, and its networks (`architecture`)."""

    NAME: ClassVar[str] = ""
    SUMMARY: ClassVar[str] = ""

    dataset: str = param("mnist", "download", "Image set in the catalog.")
    source: str = param(
        "remote",
        "download",
        "Where to read the image set: remote (the book's source), offline (a packaged stand-in), "
        "or your own https://, s3:// or local path.",
    )
    heldout: float = param(
        0.1,
        "vectorize",
        "Fraction of the images held out (never trained on) for FID/KID against generated ones.",
        gt=0,
        lt=1,
    )
    image_size: int | None = param(
        None, "vectorize", "Resize images to this square side (null: the set's own size).", ge=8
    )
    limit: int | None = param(None, "vectorize", "Use at most this many training images (null: all).", ge=1)
    latent_dim: int = param(100, "train", "Size of the latent vector z.", gt=0)
    width: float = param(
        1.0, "train", "Scale of every hidden layer's width (1.0: the book's networks).", gt=0, le=4
    )
    loss: Literal["bce", "wasserstein"] = param(
        "bce", "train", "bce: sigmoid discriminator, binary cross-entropy; wasserstein: linear critic."
    )
    n_critic: int = param(1, "train", "Discriminator (critic) updates per generator update.", ge=1)
    label_noise: float = param(
        0.0, "train", "bce only: targets move up to this far toward the other class.", ge=0, le=0.5
    )
    clip_value: float = param(
        0.0, "train", "Clip the critic's weights to [-c, c] after each update (0: no clipping).", ge=0
    )
    gp_weight: float = param(0.0, "train", "Gradient-penalty weight lambda (0: no penalty).", ge=0)
    optimizer: Literal["adam", "rmsprop"] = param("adam", "train", "Optimiser of both networks.")
    d_learning_rate: float = param(2e-4, "train", "Discriminator learning rate.", gt=0)
    g_learning_rate: float = param(2e-4, "train", "Generator learning rate.", gt=0)
    beta_1: float = param(0.5, "train", "Adam beta_1 (ignored by RMSprop).", ge=0, lt=1)
    beta_2: float = param(0.999, "train", "Adam beta_2 (ignored by RMSprop).", ge=0, lt=1)
    clipvalue: float | None = param(
        None, "train", "Clip each gradient value to [-v, v] (null: no clipping).", gt=0
    )
    batch_size: int = param(100, "train", "Real (and generated) images per discriminator update.", ge=1)
    steps: int = param(10_000, "train", "Generator updates.", ge=1)
    checkpoint_every: int = param(500, "train", "Steps between checkpoints.", ge=1)
    snapshot_every: int = param(500, "train", "Steps between sample grids of the fixed latents.", ge=1)
    grid_size: int = param(16, "train", "Fixed evaluation latents shown in every grid.", ge=1, le=100)
    sample_count: int = param(
        1000, "sample", "Generated images scored against the held-out ones (FID, KID).", ge=2
    )

    def recipe(self, num_classes: int = 0) -> Recipe:
        return Recipe(
            latent_dim=self.latent_dim,
            loss=self.loss,
            n_critic=self.n_critic,
            label_noise=self.label_noise,
            clip_value=self.clip_value,
            gp_weight=self.gp_weight,
            num_classes=num_classes,
        )

    def architecture(self) -> str:
        raise NotImplementedError


class DigitsParams(GanParams):
    """A GAN of digits: scored with a digits classifier the pipeline trains itself."""

    classifier_epochs: int = param(
        3,
        "vectorize",
        "Epochs of the digits classifier that scores generated digits (FID/KID features).",
        ge=1,
    )


class ColourParams(GanParams):
    """A GAN of colour images: scored with the ImageNet MobileNetV2's pooled features."""

    weights_source: str = param(
        "remote",
        "download",
        "ImageNet MobileNetV2 weights for FID/KID features: remote, offline, none (random) or a file of "
        "your own.",
    )
    feature_side: int = param(
        96,
        "sample",
        "Images are resized (bicubic, after 8-bit quantisation) to this side for MobileNetV2's features "
        "(trained at 224; 96 is CPU-sized). FID/KID compare only at one side.",
        ge=16,
    )


# Files of the steps
TRAIN_SET, FRAMES, GENERATOR, HISTORY, QUALITY = (
    "train",
    "frames",
    "generator.keras",
    "history.json",
    "quality.json",
)
CLASSIFIER, CLASSIFIER_META = "digits_classifier.keras", "digits_classifier.json"
SAMPLES = "samples.png"


ExtraSample = Callable[[Any, Any, StepContext, Any], dict[str, Any]]  # p, G, ctx, scorer -> metrics
ExtraReport = Callable[[Any, Mapping[str, Path]], list[Section]]


@dataclass(frozen=True)
class GanSpec:
    """What a variant declares besides its params model (whose NAME and SUMMARY name it):
    everything else is shared. `train`, `sample` and `report` are the variant module's own
    top-level step functions calling this module's, so each step's code version covers the
    variant's code (its networks and recipe, its extra samples and sections)."""

    params_model: type[GanParams]
    demo: Mapping[str, Any]
    tiny: Mapping[str, Any]
    headline: tuple[str, ...] | None = None  # None: legibility, FID, KID (digits); FID, KID, g_loss
    train: Callable[[Any, StepContext], dict[str, Any]] | None = None
    sample: Callable[[Any, StepContext], dict[str, Any]] | None = None
    report: Callable[[Any, Mapping[str, Path]], Report] | None = None
    module: str = ""


def load_set(folder: Path, split: str, what: str, num_classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A vectorized split (models.imagesets), checked: float32 NHWC in tanh range."""
    from models.imagesets import load_image_set

    x, y = load_image_set(folder, split)
    check_images(x, y, f"{what} ({split} split)", num_classes)
    return x, y


def vectorize(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    """Normalise the image set into tanh range with a held-out split; for digits, train the
    classifier whose features FID/KID use (on the training split only)."""
    from models.imagesets import vectorize_image_set

    info = vectorize_image_set(
        p.dataset,
        ctx.inputs["images"],
        ctx.out,
        value_range="tanh",
        heldout=p.heldout,
        seed=p.seed,
        class_filter=getattr(p, "class_filter", None),
        size=p.image_size,
        limit=p.limit,
        source=p.source,
    )
    ctx.log(info["description"])
    x, y = load_set(ctx.out, "train", f"image set {p.dataset}")
    summary = {"train_images": len(x), "image_shape": "x".join(map(str, x.shape[1:]))}
    if isinstance(p, DigitsParams):
        from models.files import write_json_atomic
        from models.quality import classifier_predict, save_classifier, train_digits_classifier

        if y.min() < 0:
            raise GdlError(f"image set {p.dataset} has unlabelled images: the digits classifier needs labels")
        classifier = train_digits_classifier(
            (x + 1.0) / 2.0, y, epochs=p.classifier_epochs, seed=p.seed, log=ctx.log
        )
        save_classifier(classifier, ctx.out / CLASSIFIER)
        held_x, held_y = load_set(ctx.out, "heldout", f"image set {p.dataset}")
        accuracy = float(
            (classifier_predict(classifier, (held_x + 1.0) / 2.0).argmax(axis=1) == held_y).mean()
        )
        write_json_atomic(
            ctx.out / CLASSIFIER_META, {"heldout_accuracy": accuracy, "epochs": p.classifier_epochs}
        )
        ctx.log(f"digits classifier: held-out accuracy {accuracy:.3f}")
        summary["classifier_heldout_accuracy"] = accuracy
    return summary


class Scorer:
    """Features (and, for digits, class probabilities) of images in [0, 1], for FID/KID
    (models/quality.py): the pipeline's own digits classifier, or ImageNet MobileNetV2."""

    def __init__(self, p: GanParams, dirs: Mapping[str, Path], inputs: Mapping[str, Path]):
        from models import quality

        self.digits = isinstance(p, DigitsParams)
        if self.digits:
            self.classifier = quality.load_classifier(dirs["vectorize"] / CLASSIFIER)
            self.features = quality.digits_extractor(self.classifier)
            self.described = "a digits classifier trained by this pipeline on the training split"
        else:
            self.features = quality.ImageNetFeatures(inputs.get("weights"), p.feature_side)
            self.described = self.features.described

    def predict(self, images01: np.ndarray) -> np.ndarray:
        from models.quality import classifier_predict

        return classifier_predict(self.classifier, images01)

    def quality(self, real01: np.ndarray, fake01: np.ndarray, seed: int) -> dict[str, float]:
        from models.quality import quality_metrics

        return quality_metrics(real01, fake01, self.features, seed=seed)


def build_networks(p: GanParams, shape: tuple[int, ...], num_classes: int = 0):
    from models.gan_networks import ARCHITECTURES

    arch = ARCHITECTURES[p.architecture()]
    return arch.build(shape, p.latent_dim, p.width, num_classes, critic=p.loss == "wasserstein")


def _num_classes(p: GanParams) -> int:
    return int(getattr(p, "num_classes", 0))


def train(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    import time

    import keras

    from models.images import image_grid, save_png
    from models.training import configure_runtime

    device = configure_runtime(p.device, p.mixed_precision, ctx.log)
    num_classes = _num_classes(p)
    recipe = p.recipe(num_classes)
    x, y = load_set(ctx.upstream["vectorize"], "train", f"image set {p.dataset}", num_classes)
    keras.utils.set_random_seed(p.seed)  # the same initial networks on resume
    G, D = build_networks(p, x.shape[1:], num_classes)
    g_opt = make_optimizer(p.optimizer, p.g_learning_rate, p.beta_1, p.beta_2, p.clipvalue)
    d_opt = make_optimizer(p.optimizer, p.d_learning_rate, p.beta_1, p.beta_2, p.clipvalue)
    z = fixed_latents(p.seed, p.grid_size, p.latent_dim)
    grid_labels = np.arange(p.grid_size) % num_classes if num_classes else None
    frames = ctx.out / FRAMES

    def snapshot(i: int) -> None:
        frames.mkdir(exist_ok=True)
        save_png(frames / f"step-{i + 1:06d}.png", image_grid(list(to_uint8(generate(G, z, grid_labels)))))

    t0 = time.perf_counter()
    result = train_adversarial(
        G=G,
        D=D,
        g_opt=g_opt,
        d_opt=d_opt,
        recipe=recipe,
        x=x,
        y=y,
        batch_size=p.batch_size,
        steps=p.steps,
        seed=p.seed,
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        checkpoint_every=p.checkpoint_every,
        snapshot_every=p.snapshot_every,
        snapshot=snapshot,
        progress=ctx.progress,
        log=ctx.log,
        jit_compile=p.jit_compile,
    )
    seconds = time.perf_counter() - t0
    G.save(ctx.out / GENERATOR)
    history = result["history"]
    trained = result["iterations"] - result["resumed_from"]
    last = slice(-min(50, len(history["g_loss"])), None)
    final = {
        **{k: float(np.mean(v[last])) for k, v in history.items()},
        "steps": result["iterations"],
        "train_steps_per_s": trained / seconds if trained else None,
        "generator_parameters": int(G.count_params()),
        "discriminator_parameters": int(D.count_params()),
        "resumed_from_step": result["resumed_from"],
        "device": device,
    }
    from models.files import write_json_atomic

    write_json_atomic(ctx.out / HISTORY, {"final": final, "history": history})
    return {k: v for k, v in final.items() if v is not None}


def sample(p: GanParams, ctx: StepContext, extra: ExtraSample | None = None) -> dict[str, Any]:
    """Generate `sample_count` images from seeded latents and score them against the held-out
    split (FID, KID; digits: the classifier's confidence), then the variant's own samples
    (`extra(p, G, ctx, scorer)`, its metrics)."""
    from models.files import write_json_atomic
    from models.images import image_grid, save_png
    from models.training import load_model

    num_classes = _num_classes(p)
    G = load_model(ctx.upstream["train"] / GENERATOR)
    real, _ = load_set(ctx.upstream["vectorize"], "heldout", f"image set {p.dataset}")
    rng = np.random.default_rng([p.seed, 0x5A3])
    z = rng.standard_normal((p.sample_count, p.latent_dim), dtype=np.float32)
    labels = rng.integers(0, num_classes, p.sample_count).astype(np.int32) if num_classes else None
    fake = generate(G, z, labels)
    scorer = Scorer(p, ctx.upstream, ctx.inputs)
    metrics: dict[str, Any] = dict(scorer.quality((real + 1.0) / 2.0, (fake + 1.0) / 2.0, p.seed))
    if scorer.digits:
        probs = scorer.predict((fake + 1.0) / 2.0)
        confidence = probs.max(axis=1)
        metrics["classifier_confidence"] = float(confidence.mean())
        metrics["legible_fraction"] = float((confidence >= LEGIBLE).mean())
        if labels is not None:
            metrics["label_accuracy"] = float((probs.argmax(axis=1) == labels).mean())
        # The same two numbers for real held-out digits: what "legible" reaches at best.
        real_confidence = scorer.predict((real + 1.0) / 2.0).max(axis=1)
        metrics["heldout_classifier_confidence"] = float(real_confidence.mean())
        metrics["heldout_legible_fraction"] = float((real_confidence >= LEGIBLE).mean())
    grid_z = fixed_latents(p.seed, p.grid_size, p.latent_dim)
    grid_labels = np.arange(p.grid_size) % num_classes if num_classes else None
    save_png(ctx.out / SAMPLES, image_grid(list(to_uint8(generate(G, grid_z, grid_labels)))))
    if extra:
        metrics.update(extra(p, G, ctx, scorer))
    metrics["quality_features"] = scorer.described
    write_json_atomic(ctx.out / QUALITY, metrics)
    ctx.log(", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


LEGIBLE = 0.9  # a generated digit counts as legible when the classifier gives one class >= this


def report(p: GanParams, dirs: Mapping[str, Path], extra: ExtraReport | None = None) -> Report:
    """Samples, the fixed latents' progression, losses, D's scores and the quality metrics;
    `extra(p, dirs)` adds the variant's own sections."""
    import json

    from models.images import load_image

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    quality = json.loads((dirs["sample"] / QUALITY).read_text())
    frame_files = sorted((dirs["train"] / FRAMES).glob("step-*.png"))
    frames = [load_image(f) for f in frame_files] or [load_image(dirs["sample"] / SAMPLES)]
    frame_captions = [f"step {int(f.stem.split('-')[1])}" for f in frame_files] or ["final"]
    from models.imagesets import image_set_info

    data = image_set_info(dirs["vectorize"])
    metrics = {
        **{k: v for k, v in final.items() if v is not None},
        **{k: v for k, v in quality.items() if isinstance(v, (int, float, str))},
    }
    classifier_meta = dirs["vectorize"] / CLASSIFIER_META
    if classifier_meta.is_file():
        metrics["digits_classifier_heldout_accuracy"] = json.loads(classifier_meta.read_text())[
            "heldout_accuracy"
        ]
    losses = {k: history[k] for k in ("d_loss", "g_loss") if k in history}
    scores = {f"D on {k[2:]}": history[k] for k in ("d_real", "d_fake") if k in history}
    r = p.recipe(_num_classes(p))
    constraint = (f", weights clipped to +-{r.clip_value}" if r.clip_value else "") + (
        f", gradient penalty {r.gp_weight}" if r.gp_weight else ""
    )
    digits_note = (
        " For digits the features are those of a small classifier this pipeline trains on the "
        "training split (as TF-GAN's MNIST Frechet distance does), so scores compare runs of this "
        f"pipeline, not published MNIST FIDs; a digit is legible when that classifier gives one class "
        f">= {LEGIBLE}."
        if isinstance(p, DigitsParams)
        else f" Images are quantised to 8 bits, then resized (bicubic) to {getattr(p, 'feature_side', 0)}px."
    )
    sections: list[Section] = [
        Image(
            f"Generated images from {p.grid_size} fixed latents after {final['steps']} steps",
            "samples.png",
            load_image(dirs["sample"] / SAMPLES),
        ),
        Animation(
            "The same fixed latents during training (comparable grids)",
            "training.gif",
            frames,
            frame_captions,
        ),
        Curve("Losses per step", "loss.png", losses, x="step", y="loss"),
        Curve("Discriminator's mean score per step", "scores.png", scores, x="step", y="score"),
    ]
    if extra:
        sections += extra(p, dirs)
    sections.append(
        Note(
            f"{p.SUMMARY}. Loss {r.loss}, n_critic {r.n_critic}, label noise {r.label_noise}{constraint}; "
            f"{p.optimizer} (D {p.d_learning_rate}, G {p.g_learning_rate}); latent_dim {p.latent_dim}, "
            f"batch {p.batch_size}, {final['steps']} steps; generator {final['generator_parameters']} "
            f"and discriminator {final['discriminator_parameters']} parameters (width x{p.width}). "
            f"FID and KID between {p.sample_count} generated and the held-out real images, "
            f"features: {quality['quality_features']}." + digits_note + f" Data: {data['description']}."
        )
    )
    return Report(
        title=f"{p.NAME}: {p.SUMMARY}",
        metrics=metrics,
        sections=sections,
        history={k: history[k] for k in ("d_loss", "g_loss", "d_real", "d_fake") if k in history},
        weights=None if isinstance(p, DigitsParams) else quality["quality_features"],
    )


def register_gan(spec: GanSpec) -> Technique:
    model = spec.params_model
    inputs = {"images": Input(lambda p: p.dataset, source="source")}
    if not issubclass(model, DigitsParams):
        inputs["weights"] = Input("mobilenet_v2_imagenet", source="weights_source", optional=True)
    return register(
        Technique(
            name=model.NAME,
            summary=model.SUMMARY,
            params_model=model,
            inputs=inputs,
            vectorize=vectorize,
            train=spec.train or train,
            sample=spec.sample or sample,
            report=spec.report or report,
            headline=spec.headline
            or (
                ("legible_fraction", "fid", "kid")
                if issubclass(model, DigitsParams)
                else ("fid", "kid", "g_loss")
            ),
            history_x="step",
            plots={"losses": ("d_loss", "g_loss"), "discriminator": ("d_real", "d_fake")},
            demo_overrides=spec.demo,
            tiny_overrides=spec.tiny,
            module=spec.module,
        )
    )
