"""pix2pix: paired image-to-image translation (Isola et al. 2017, the conditional GAN the
Cookbook names beside CycleGAN).

One U-Net generator maps the source image to the target; a PatchGAN discriminator judges
(source, image) pairs stacked on the channels, so it asks "is this a plausible translation of
this source", patch by patch. The generator's loss is the adversarial one (binary cross-entropy
on the patches' logits) plus `lambda_l1` (100) times the L1 distance to the true target: L1 gets
the low frequencies right, the discriminator the texture. Networks and data are shared with
CycleGAN (models.techniques.translation.common); the noise of the paper's dropout is left out, so a run is
reproducible and resumes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.core.files import numbered_name, write_json_atomic
from models.core.params import param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.report import Note, Report
from models.techniques.translation.common import (
    FRAMES,
    HISTORY,
    SCORES,
    TranslationParams,
    adam,
    blank_page,
    build_patchgan,
    build_unet_generator,
    enlarged,
    load_domains,
    load_meta,
    scores,
    train_networks,
    training_batch,
    translator,
    vectorize_domains,
)
from models.techniques.translation.report import (
    frames_section,
    loss_curve,
    score_metrics,
    scores_table,
    ssim_quality,
    triplets,
)

WEIGHTS = "generator.weights.h5"
SSIM_FLOOR = 0.75  # the demo's floor on the held-out translations' SSIM to the truth


class Pix2PixParams(TranslationParams):
    dataset: Literal["facades", "photos"] = param(
        "facades",
        "download",
        "Paired domains: facades (CMP facades, Isola et al.) or photos (the offline demo: photo tiles "
        "and their edge maps).",
    )
    direction: Literal["a_to_b", "b_to_a"] = param(
        "b_to_a",
        "train",
        "Which way to translate: b_to_a maps facades' label maps to photos (Isola et al.), a_to_b "
        "the reverse.",
    )
    lambda_l1: float = param(100.0, "train", "Weight of the L1 loss (Isola et al.: 100).", ge=0)
    steps: int = param(
        80_000, "train", "Training steps (Isola et al.: 200 epochs of 400 facades at batch 1).", ge=1
    )


DEMO = {
    # Offline and CPU-sized: 32px tiles of the bundled photos, translated to their edge maps (the
    # other way, edges to photo, needs far more than a CPU minute to get past colour blotches).
    # Photos at 256px give ~300 training tiles; 1,500 steps take about 2 minutes on 2 cores.
    "dataset": "photos",
    "data_source": "offline",
    "direction": "a_to_b",
    "image_size": 32,
    "photo_side": 256,
    "gf": 16,
    "df": 32,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "steps": 1500,
    "checkpoint_every": 250,
    "frame_every": 150,
}

TINY = {
    # 32px: at 16 the innermost blocks are 1x1, which instance normalisation zeroes.
    "image_size": 32,
    "photo_side": 64,
    "gf": 4,
    "df": 4,
    "batch_size": 2,
    "steps": 4,
    "checkpoint_every": 2,
    "frame_every": 2,
    "samples": 2,
}


def source_target(
    domains: Mapping[str, np.ndarray], direction: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    a, b = domains[f"{split}_a"], domains[f"{split}_b"]
    return (a, b) if direction == "a_to_b" else (b, a)


class Pix2Pix:
    """The generator, the conditional discriminator and their optimizers, built after seeding."""

    def __init__(self, p: Pix2PixParams):
        import keras

        keras.utils.set_random_seed(p.seed)
        self.generator = build_unet_generator(p.image_size, p.gf, "generator")
        self.discriminator = build_patchgan(p.image_size, p.df, 6, "discriminator")
        self.g_opt = adam(p, self.generator.trainable_variables)
        self.d_opt = adam(p, self.discriminator.trainable_variables)

    @property
    def variables(self) -> dict[str, Any]:
        from models.toolkit.training import model_variables

        return model_variables(generator=self.generator, discriminator=self.discriminator)


def make_train_step(gan: Pix2Pix, p: Pix2PixParams):
    """One compiled step on a batch of (source, target) pairs: the generator's loss
    (cross-entropy + lambda_l1 * L1) and the discriminator's (real pairs 1, generated 0, halved
    as in Isola et al.), from the same forward pass."""
    import tensorflow as tf

    g, d = gan.generator, gan.discriminator

    def bce(logits, label: float):
        return tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), label), logits=logits)
        )

    @tf.function(jit_compile=p.jit_compile, autograph=False)  # no tensor-dependent Python control flow
    def train_step(source, target):
        with tf.GradientTape(persistent=True) as tape:
            fake = g(source, training=True)
            # Real and generated pairs through the discriminator as one batch (instance
            # normalisation is per image: only the speed changes).
            pairs = tf.concat([tf.concat([source, target], -1), tf.concat([source, fake], -1)], 0)
            real_logits, fake_logits = tf.split(d(pairs, training=True), 2)
            adversarial = bce(fake_logits, 1.0)
            l1 = tf.reduce_mean(tf.abs(target - fake))
            g_loss = adversarial + p.lambda_l1 * l1
            d_loss = 0.5 * (bce(real_logits, 1.0) + bce(fake_logits, 0.0))
        g_vars, d_vars = g.trainable_variables, d.trainable_variables
        gan.g_opt.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars, strict=True))
        gan.d_opt.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars, strict=True))
        return {"g_loss": g_loss, "adversarial": adversarial, "l1": l1, "d_loss": d_loss}

    return train_step


def batch(domains: Mapping[str, np.ndarray], p: Pix2PixParams, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Step `step`'s pairs: the same images of both domains, mirrored alike."""
    source, target = source_target(domains, p.direction, "train")
    x, picked = training_batch(source, p.batch_size, p.seed, step, 0, p.flip)
    y, _ = training_batch(target, p.batch_size, p.seed, step, 0, p.flip, pick=picked)
    return x, y


# ---------------------------------------------------------------------------------------------
# Steps


def vectorize(p: Pix2PixParams, ctx: StepContext) -> dict[str, Any]:
    return vectorize_domains(p, ctx, paired=True)


def train(p: Pix2PixParams, ctx: StepContext) -> dict[str, Any]:
    import tensorflow as tf

    from models.core.images import save_png, strip
    from models.toolkit.training import configure_runtime, shape_summary

    device = configure_runtime(p.device, p.mixed_precision, ctx.log, float32_only="pix2pix trains in float32")
    domains = load_domains(ctx.upstream["vectorize"])
    gan = Pix2Pix(p)
    train_step = make_train_step(gan, p)
    translate = translator(gan.generator)
    source, target = source_target(domains, p.direction, "test")

    def step(i) -> dict[str, Any]:
        x, y = batch(domains, p, int(i))
        return train_step(tf.constant(x), tf.constant(y))

    def snapshot(i: int) -> None:
        (ctx.out / FRAMES).mkdir(exist_ok=True)
        save_png(
            ctx.out / FRAMES / numbered_name("step", i + 1),
            strip([enlarged(im) for im in (source[0], translate(source[:1])[0], target[0])]),
        )

    summary = train_networks(
        p,
        ctx,
        gan,
        step,
        snapshot,
        device,
        {
            "generator_parameters": int(gan.generator.count_params()),
            "discriminator_parameters": int(gan.discriminator.count_params()),
            **shape_summary(
                [gan.generator, gan.discriminator], (p.batch_size, p.image_size, p.image_size, 3)
            ),
        },
    )
    gan.generator.save_weights(ctx.out / WEIGHTS)
    return summary


def sample(p: Pix2PixParams, ctx: StepContext) -> dict[str, Any]:
    """Translate every held-out source; score against the true targets, trained and untrained."""
    from models.core.images import save_generated, save_png

    domains = load_domains(ctx.upstream["vectorize"])
    source, target = source_target(domains, p.direction, "test")
    gan = Pix2Pix(p)  # the same seed: the weights training started from
    translate = translator(gan.generator)
    untrained = scores(translate(source), target)
    gan.generator.load_weights(ctx.upstream["train"] / WEIGHTS)
    fake = translate(source)
    found = {
        p.direction: {
            "trained": scores(fake, target),
            "untrained": untrained,
            "blank": scores(blank_page(target), target),
        }
    }
    files = []
    n = min(p.samples, len(source))
    for i in range(n):  # lossless PNGs: the report reads them back
        files.append(f"translated-{i + 1:02d}.png")
        save_png(ctx.out / files[-1], fake[i])
    save_generated(ctx.out, fake)
    write_json_atomic(ctx.out / SCORES, {"paired": True, "scores": found})
    return {"files": files, "held_out": len(source)}


def report(p: Pix2PixParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    found = json.loads((dirs["sample"] / SCORES).read_text())["scores"]
    meta = load_meta(dirs["vectorize"])
    source, target = source_target(load_domains(dirs["vectorize"]), p.direction, "test")
    shown = [load_image(f) for f in sorted(dirs["sample"].glob("translated-*.png"))]
    name_a, name_b = meta["domains"]
    name_in, name_out = (name_a, name_b) if p.direction == "a_to_b" else (name_b, name_a)
    counts = meta["counts"]
    sections = [
        Note(
            f"Domain A: {name_a}; domain B: {name_b}; translating {name_in} -> {name_out}. Trained on "
            f"{counts['train_a']} aligned pairs of {p.image_size}px, scored on {counts['test_a']} held-out "
            "pairs."
        ),
        triplets(
            "Held-out pairs: input, translation, truth",
            "translations.png",
            [(source[i], shown[i], target[i]) for i in range(len(shown))],
            ["input", "translation", "truth"],
        ),
        scores_table(
            "Held-out scores: trained and untrained generator, and a blank page of the truths' median "
            "colour (L1 on a 0..1 scale, PSNR in dB)",
            found,
        ),
        loss_curve("L1 loss per step", "l1.png", history, ["l1"]),
        loss_curve(
            "Adversarial losses per step (binary cross-entropy on the patches)",
            "adversarial.png",
            history,
            ["adversarial", "d_loss"],
        ),
        Note(
            f"U-Net generator (gf={p.gf}, {final['generator_parameters']} parameters), conditional PatchGAN "
            f"discriminator (df={p.df}, {final['discriminator_parameters']} parameters, "
            f"{p.image_size // 16}x{p.image_size // 16} patches); lambda_l1={p.lambda_l1:g}, "
            f"Adam({p.learning_rate:g}, {p.beta_1}), batch {p.batch_size}; {final['steps']} steps."
        ),
    ]
    animation = frames_section(
        "The first held-out input through the generator during training", dirs["train"]
    )
    if animation:
        sections.insert(2, animation)
    return Report(
        title=f"pix2pix: paired translation, {name_in} -> {name_out}",
        metrics={
            **{k: v for k, v in final.items() if v is not None},
            **{f"test_{k}": v for k, v in score_metrics({"": found[p.direction]}).items()},
        },
        sections=sections,
        history={k: history[k] for k in ("g_loss", "adversarial", "l1", "d_loss")},
        quality=ssim_quality(found, p.direction, "held-out translation", SSIM_FLOOR),
    )


register(
    Technique(
        name="pix2pix",
        summary="paired image-to-image translation: conditional GAN with an L1 loss (Isola et al.)",
        params_model=Pix2PixParams,
        inputs={"data": Input(lambda p: p.dataset, source="data_source")},
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("test_ssim", "test_psnr", "test_l1"),
        history_x="step",
        plots={"L1": ("l1",), "adversarial": ("adversarial", "d_loss")},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {"steps": 4, "checkpoint_every": 4, "frame_every": 4, "samples": 2, "max_images": 6}
        ),
        module=__name__,
    )
)
