"""A GAN technique's shared pieces: the params base class, vectorize, train, sample and report.

Each variant (variants.py) declares its networks and defaults and registers itself with
`register_gan`; the adversarial training itself is trainer.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from models.core.errors import GdlError
from models.core.files import numbered_files, numbered_name
from models.core.memory import FLOAT
from models.core.params import DataParallelParams, param, source_param, weights_source_param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Check, Quality
from models.reporting.report import Animation, Curve, Image, Note, Report, Section
from models.techniques.gan.trainer import (
    Recipe,
    check_images,
    fixed_latents,
    generate,
    make_optimizer,
    to_uint8,
    train_adversarial,
)
from models.toolkit.backbones import weights_entry

LEGIBLE = 0.9  # a generated digit counts as legible when the classifier gives one class >= this
LEGIBLE_FLOOR = 0.5  # the demo's floor on the legible fraction of generated digits
FID_SCORE_FLOOR = 0.5  # the demo's floor on a colour GAN's FID score


class GanParams(DataParallelParams):
    """Fields every GAN technique has; a variant's subclass sets the book's values as defaults,
    its technique's NAME and SUMMARY, and its networks (`architecture`). DigitsParams and
    ColourParams say how its images are scored (DIGITS, HEADLINE, `quality_note`)."""

    NAME: ClassVar[str] = ""
    SUMMARY: ClassVar[str] = ""
    DIGITS: ClassVar[bool] = False  # scored by the pipeline's own digits classifier
    HEADLINE: ClassVar[tuple[str, ...]] = ("fid", "kid", "g_loss")  # the gallery's, unless the spec says

    dataset: str = param("mnist", "download", "Image set in the catalog.")
    source: str = source_param("the image set", remote="the book's source", offline="a packaged stand-in")
    held_out: float = param(
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
    weight_clip: float = param(
        0.0, "train", "Clip the critic's weights to [-c, c] after each update (0: no clipping).", ge=0
    )
    gp_weight: float = param(0.0, "train", "Gradient-penalty weight lambda (0: no penalty).", ge=0)
    optimizer: Literal["adam", "rmsprop"] = param("adam", "train", "Optimiser of both networks.")
    d_learning_rate: float = param(2e-4, "train", "Discriminator learning rate.", gt=0)
    g_learning_rate: float = param(2e-4, "train", "Generator learning rate.", gt=0)
    beta_1: float = param(0.5, "train", "Adam beta_1 (ignored by RMSprop).", ge=0, lt=1)
    beta_2: float = param(0.999, "train", "Adam beta_2 (ignored by RMSprop).", ge=0, lt=1)
    gradient_clip: float | None = param(
        None, "train", "Clip each gradient value to [-v, v] (null: no clipping).", gt=0
    )
    batch_size: int = param(100, "train", "Real (and generated) images per discriminator update.", ge=1)
    steps: int = param(10_000, "train", "Generator updates.", ge=1)
    checkpoint_every: int = param(500, "train", "Steps between checkpoints.", ge=1)
    frame_every: int = param(500, "train", "Steps between sample grids of the fixed latents.", ge=1)
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
            clip_value=self.weight_clip,
            gp_weight=self.gp_weight,
            num_classes=num_classes,
        )

    def architecture(self) -> str:
        raise NotImplementedError

    def label_classes(self) -> int:
        """Classes the generator is conditioned on (0: unconditional)."""
        return 0

    def kept_class(self) -> int | None:
        """The one class of the image set kept for training (None: every class)."""
        return None

    def quality_note(self) -> str:
        """What the report says about the features FID/KID are computed in."""
        raise NotImplementedError

    def quality_record(self, m: Mapping[str, Any]) -> Quality:
        """The run's quality record from the sample step's metrics."""
        raise NotImplementedError

    def memory_floor(self) -> tuple[int, dict[str, int]]:
        """Bytes a training step needs at the least (models/core/memory.py): the batch of latent
        vectors and of images, and the generator's first layer (at least one unit per latent
        dimension) with its gradient and two optimizer slots."""
        side = self.image_size or (8 if self.DIGITS else 1)  # the smallest digits set: 8x8
        pixels = side * side * (1 if self.DIGITS else 3)
        needed = FLOAT * (self.batch_size * (self.latent_dim + pixels) + 4 * self.latent_dim)
        return needed, {"latent_dim": self.latent_dim, "batch_size": self.batch_size}


class DigitsParams(GanParams):
    """A GAN of digits: scored with a digits classifier the pipeline trains itself."""

    DIGITS = True
    HEADLINE = ("legible_fraction", "fid", "kid")

    classifier_epochs: int = param(
        3,
        "vectorize",
        "Epochs of the digits classifier that scores generated digits (FID/KID features).",
        ge=1,
    )

    def quality_note(self) -> str:
        return (
            " For digits the features are those of a small classifier this pipeline trains on the "
            "training split (as TF-GAN's MNIST Frechet distance does), so scores compare runs of this "
            f"pipeline, not published MNIST FIDs; a digit is legible when that classifier gives one class "
            f">= {LEGIBLE}."
        )

    def quality_checks(self, m: Mapping[str, Any]) -> tuple[Check, ...]:
        """Conditions besides legibility (a conditional GAN's requested labels)."""
        return ()

    def quality_record(self, m: Mapping[str, Any]) -> Quality:
        return Quality(
            metric="legible_fraction",
            value=m["legible_fraction"],
            untrained=m["untrained_legible_fraction"],
            reference=m["heldout_legible_fraction"],
            value_floor=LEGIBLE_FLOOR,
            label="legible fraction",
            untrained_is="the untrained generator",
            reference_is="real held-out digits",
            checks=self.quality_checks(m),
        )


class ColourParams(GanParams):
    """A GAN of colour images: scored with the ImageNet MobileNetV2's pooled features."""

    weights_source: str = weights_source_param("the ImageNet MobileNetV2 weights for FID/KID features")
    feature_side: int = param(
        96,
        "sample",
        "Images are resized (bicubic, after 8-bit quantisation) to this side for MobileNetV2's features "
        "(trained at 224; 96 is CPU-sized). FID/KID compare only at one side.",
        ge=16,
    )

    def quality_note(self) -> str:
        return f" Images are quantised to 8 bits, then resized (bicubic) to {self.feature_side}px."

    def quality_record(self, m: Mapping[str, Any]) -> Quality:
        return Quality(
            metric="fid",
            value=m["fid"],
            untrained=m["untrained_fid"],
            reference=m["reference_fid"],
            floor=FID_SCORE_FLOOR,
            higher_is_better=False,
            label="FID",
            untrained_is="the untrained generator",
            reference_is="real training images",
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
    everything else is shared. `vectorize`, `train`, `sample` and `report` are the variant
    module's own top-level step functions calling this module's, so each step's code version
    covers the variant's code (its params classes' methods, its extra samples and sections)."""

    params_model: type[GanParams]
    demo: Mapping[str, Any]
    tiny: Mapping[str, Any]
    headline: tuple[str, ...] | None = None  # None: the params class's HEADLINE
    vectorize: Callable[[Any, StepContext], dict[str, Any]] | None = None
    train: Callable[[Any, StepContext], dict[str, Any]] | None = None
    sample: Callable[[Any, StepContext], dict[str, Any]] | None = None
    report: Callable[[Any, Mapping[str, Path]], Report] | None = None


def load_set(folder: Path, split: str, what: str, num_classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A vectorized split (models.toolkit.imagesets), checked: float32 NHWC in tanh range."""
    from models.toolkit.imagesets import load_image_set

    x, y = load_image_set(folder, split)
    check_images(x, y, f"{what} ({split} split)", num_classes)
    return x, y


def vectorize(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    """Normalise the image set into tanh range with a held-out split; for digits, train the
    classifier whose features FID/KID use (on the training split only)."""
    from models.toolkit.imagesets import vectorize_image_set

    info = vectorize_image_set(
        p.dataset,
        ctx.inputs["images"],
        ctx.out,
        value_range="tanh",
        heldout=p.held_out,
        seed=p.seed,
        class_filter=p.kept_class(),
        size=p.image_size,
        limit=p.limit,
        source=p.source,
    )
    ctx.log(info["description"])
    x, y = load_set(ctx.out, "train", f"image set {p.dataset}")
    summary = {"train_images": len(x), "image_shape": "x".join(map(str, x.shape[1:]))}
    if p.DIGITS:
        from models.core.files import write_json_atomic
        from models.toolkit.quality import classifier_predict, save_classifier, train_digits_classifier

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
    (models/toolkit/quality.py): the pipeline's own digits classifier, or ImageNet MobileNetV2."""

    def __init__(self, p: GanParams, dirs: Mapping[str, Path], inputs: Mapping[str, Path]):
        from models.toolkit import quality

        self.digits = p.DIGITS
        if self.digits:
            self.classifier = quality.load_classifier(dirs["vectorize"] / CLASSIFIER)
            self.features = quality.digits_extractor(self.classifier)
            self.described = "a digits classifier trained by this pipeline on the training split"
        else:
            self.features = quality.ImageNetFeatures(inputs.get("weights"), p.feature_side)
            self.described = self.features.described

    def predict(self, images01: np.ndarray) -> np.ndarray:
        from models.toolkit.quality import classifier_predict

        return classifier_predict(self.classifier, images01)

    def quality(self, real01: np.ndarray, fake01: np.ndarray, seed: int) -> dict[str, float]:
        from models.toolkit.quality import quality_metrics

        return quality_metrics(real01, fake01, self.features, seed=seed)


def build_networks(p: GanParams, shape: tuple[int, ...], num_classes: int = 0):
    from models.techniques.gan.networks import ARCHITECTURES

    arch = ARCHITECTURES[p.architecture()]
    return arch.build(shape, p.latent_dim, p.width, num_classes, critic=p.loss == "wasserstein")


def train(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    import time

    import keras

    from models.core.images import image_grid, save_png
    from models.toolkit.distribute import data_parallel
    from models.toolkit.training import configure_runtime, shape_summary, step_summary

    device = configure_runtime(p.device, p.mixed_precision, ctx.log)
    replicas = data_parallel(p.replicas, device, p.batch_size)
    num_classes = p.label_classes()
    recipe = p.recipe(num_classes)
    x, y = load_set(ctx.upstream["vectorize"], "train", f"image set {p.dataset}", num_classes)
    keras.utils.set_random_seed(p.seed)  # the same initial networks on resume
    with replicas.scope():  # mirrored networks and optimizers with more than one replica
        G, D = build_networks(p, x.shape[1:], num_classes)
        g_opt = make_optimizer(p.optimizer, p.g_learning_rate, p.beta_1, p.beta_2, p.gradient_clip)
        d_opt = make_optimizer(p.optimizer, p.d_learning_rate, p.beta_1, p.beta_2, p.gradient_clip)
    z = fixed_latents(p.seed, p.grid_size, p.latent_dim)
    grid_labels = np.arange(p.grid_size) % num_classes if num_classes else None
    frames = ctx.out / FRAMES

    def snapshot(i: int) -> None:
        frames.mkdir(exist_ok=True)
        grid = image_grid(list(to_uint8(generate(G, z, grid_labels))))
        save_png(frames / numbered_name("step", i + 1), grid)

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
        snapshot_every=p.frame_every,
        snapshot=snapshot,
        progress=ctx.progress,
        log=ctx.log,
        jit_compile=p.jit_compile,
        budget=ctx.budget,
        replicas=replicas,
    )
    seconds = time.perf_counter() - t0
    G.save(ctx.out / GENERATOR)
    history = result["history"]
    last = slice(-min(50, len(history["g_loss"])), None)
    final = {
        **{k: float(np.mean(v[last])) for k, v in history.items()},
        **step_summary(result, seconds),
        "generator_parameters": int(G.count_params()),
        "discriminator_parameters": int(D.count_params()),
        **shape_summary([G, D], (p.batch_size, *x.shape[1:])),
        "device": device,
        "replicas": result["replicas"],
        "devices": result["devices"],
    }
    from models.core.files import write_json_atomic

    write_json_atomic(ctx.out / HISTORY, {"final": final, "history": history})
    return {k: v for k, v in final.items() if v is not None}


def sample(p: GanParams, ctx: StepContext, extra: ExtraSample | None = None) -> dict[str, Any]:
    """Generate `sample_count` images from seeded latents and score them against the held-out
    split (FID, KID; digits: the classifier's confidence), then the variant's own samples
    (`extra(p, G, ctx, scorer)`, its metrics)."""
    import keras

    from models.core.files import write_json_atomic
    from models.core.images import image_grid, save_generated, save_png
    from models.toolkit.training import load_model

    num_classes = p.label_classes()
    G = load_model(ctx.upstream["train"] / GENERATOR)
    real, _ = load_set(ctx.upstream["vectorize"], "heldout", f"image set {p.dataset}")
    rng = np.random.default_rng([p.seed, 0x5A3])
    z = rng.standard_normal((p.sample_count, p.latent_dim), dtype=np.float32)
    labels = rng.integers(0, num_classes, p.sample_count).astype(np.int32) if num_classes else None
    fake = generate(G, z, labels)
    save_generated(ctx.out, to_uint8(fake), **({"labels": labels} if labels is not None else {}))
    scorer = Scorer(p, ctx.upstream, ctx.inputs)
    metrics: dict[str, Any] = dict(scorer.quality((real + 1.0) / 2.0, (fake + 1.0) / 2.0, p.seed))
    # The reference points of the quality record: the untrained generator (the networks training
    # started from: same seed, same latents) and real images of the training split scored
    # against the held-out split as the generated ones are.
    keras.utils.set_random_seed(p.seed)
    G0, _ = build_networks(p, real.shape[1:], num_classes)
    untrained = generate(G0, z, labels)
    if scorer.digits:
        probs = scorer.predict((fake + 1.0) / 2.0)
        confidence = probs.max(axis=1)
        metrics["classifier_confidence"] = float(confidence.mean())
        metrics["legible_fraction"] = float((confidence >= LEGIBLE).mean())
        metrics["untrained_legible_fraction"] = float(
            (scorer.predict((untrained + 1.0) / 2.0).max(axis=1) >= LEGIBLE).mean()
        )
        if labels is not None:
            metrics["label_accuracy"] = float((probs.argmax(axis=1) == labels).mean())
        # The same two numbers for real held-out digits: what "legible" reaches at best.
        real_confidence = scorer.predict((real + 1.0) / 2.0).max(axis=1)
        metrics["heldout_classifier_confidence"] = float(real_confidence.mean())
        metrics["heldout_legible_fraction"] = float((real_confidence >= LEGIBLE).mean())
    else:
        train_real, _ = load_set(ctx.upstream["vectorize"], "train", f"image set {p.dataset}")
        pick = np.random.default_rng([p.seed, 0x5A4]).permutation(len(train_real))[: p.sample_count]
        reference = scorer.quality((real + 1.0) / 2.0, (train_real[pick] + 1.0) / 2.0, p.seed)
        metrics["reference_fid"] = reference["fid"]
        metrics["untrained_fid"] = scorer.quality((real + 1.0) / 2.0, (untrained + 1.0) / 2.0, p.seed)["fid"]
    grid_z = fixed_latents(p.seed, p.grid_size, p.latent_dim)
    grid_labels = np.arange(p.grid_size) % num_classes if num_classes else None
    save_png(ctx.out / SAMPLES, image_grid(list(to_uint8(generate(G, grid_z, grid_labels)))))
    if extra:
        metrics.update(extra(p, G, ctx, scorer))
    metrics["quality_features"] = scorer.described
    write_json_atomic(ctx.out / QUALITY, metrics)
    ctx.log(", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def report(p: GanParams, dirs: Mapping[str, Path], extra: ExtraReport | None = None) -> Report:
    """Samples, the fixed latents' progression, losses, D's scores and the quality metrics;
    `extra(p, dirs)` adds the variant's own sections."""
    import json

    from models.core.images import load_image

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    quality = json.loads((dirs["sample"] / QUALITY).read_text())
    frame_files = numbered_files(dirs["train"] / FRAMES, "step")
    frames = [load_image(f) for _, f in frame_files] or [load_image(dirs["sample"] / SAMPLES)]
    frame_captions = [f"step {step}" for step, _ in frame_files] or ["final"]
    from models.toolkit.imagesets import image_set_info

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
    r = p.recipe(p.label_classes())
    constraint = (f", weights clipped to +-{r.clip_value}" if r.clip_value else "") + (
        f", gradient penalty {r.gp_weight}" if r.gp_weight else ""
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
            f"features: {quality['quality_features']}." + p.quality_note() + f" Data: {data['description']}."
        )
    )
    return Report(
        title=f"{p.NAME}: {p.SUMMARY}",
        metrics=metrics,
        sections=sections,
        history={k: history[k] for k in ("d_loss", "g_loss", "d_real", "d_fake") if k in history},
        weights=None if p.DIGITS else quality["quality_features"],
        quality=p.quality_record(quality),
    )


# The rehearsal: the profile's data and full-width networks, 8 steps, 512 training images, a
# 64-image quality sample (`gdl run --rehearse`).
REHEARSAL = Rehearsal(
    caps={
        "steps": 8,
        "checkpoint_every": 8,
        "frame_every": 8,
        "limit": 512,
        "sample_count": 64,
        "classifier_epochs": 1,
        "interpolation_steps": 4,
    }
)


def register_gan(spec: GanSpec) -> Technique:
    model = spec.params_model
    inputs = {"images": Input(lambda p: p.dataset, source="source")}
    if not model.DIGITS:  # ColourParams: ImageNet MobileNetV2 features
        inputs["weights"] = Input(weights_entry("mobilenet_v2"), source="weights_source", optional=True)
    return register(
        Technique(
            name=model.NAME,
            summary=model.SUMMARY,
            params_model=model,
            inputs=inputs,
            vectorize=spec.vectorize or vectorize,
            train=spec.train or train,
            sample=spec.sample or sample,
            report=spec.report or report,
            headline=spec.headline or model.HEADLINE,
            history_x="step",
            plots={"losses": ("d_loss", "g_loss"), "discriminator": ("d_real", "d_fake")},
            demo_overrides=spec.demo,
            tiny_overrides=spec.tiny,
            rehearsal=REHEARSAL,
            module=model.__module__,  # the variant's module
        )
    )
