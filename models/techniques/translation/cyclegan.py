"""CycleGAN: unpaired image-to-image translation (Zhu et al. 2017; Vasilev, chapter 5).

Two generators, G: A -> B and F: B -> A (U-Nets), and two PatchGAN discriminators, D_A and D_B,
trained with least-squares (MSE) adversarial losses. Without pairs, what keeps a translation
tied to its input is the cycle: F(G(a)) should give back a and G(F(b)) b (mean absolute error,
weight `lambda_cycle`); the identity loss (G(b) = b, F(a) = a, weight `lambda_id`) keeps colours
where nothing needs translating. The discriminators see a history of generated images, not
only the latest (Shrivastava et al. 2017, as the CycleGAN paper does): a pool of 50, from
which each new fake is swapped for an older one half the time. The pool lives in Keras variables
checkpointed with the weights, and its coin flips are seeded per step, so a resumed run ends
with the same weights as an uninterrupted one.

One compiled step (models.techniques.translation.common for the networks and data, models.toolkit.training's
optimize_resumable for the loop, checkpoints and snapshots) updates both generators and both
discriminators from the same forward pass (as the keras-io CycleGAN does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.core.files import numbered_name, write_json_atomic
from models.core.params import param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Check, Quality
from models.reporting.report import Note, Report
from models.techniques.translation.common import (
    FRAMES,
    HISTORY,
    SCORES,
    Dataset,
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

WEIGHTS = {name: f"{name}.weights.h5" for name in ("g_ab", "g_ba")}
SSIM_FLOOR = 0.4  # the demo's floor on A -> B translations' SSIM to the true B
CYCLE_SSIM_FLOOR = 0.6  # ... and on the cycle A -> B -> A's SSIM to A
# The held-out translations shown in the report, as PNG samples (lossless: the report reads them back).
SHOWN = {kind: kind + "-{:02d}.png" for kind in ("a_to_b", "a_to_b_to_a", "b_to_a", "b_to_a_to_b")}


class CycleGANParams(TranslationParams):
    dataset: Dataset = param(
        "horse2zebra",
        "download",
        "Domains to translate between: horse2zebra (unpaired; no truth to score against), facades "
        "(Vasilev's choice; paired, so the held-out translations are scored) or photos (the offline "
        "demo: photo tiles and their edge maps).",
    )
    lambda_cycle: float = param(10.0, "train", "Weight of the cycle-consistency loss (Vasilev: 10).", ge=0)
    lambda_id_ratio: float = param(
        0.1, "train", "Identity loss weight as a fraction of lambda_cycle (Vasilev: 0.1).", ge=0
    )
    pool_size: int = param(
        50, "train", "Generated images the discriminators draw from (Zhu et al.: 50; 0: none).", ge=0
    )
    steps: int = param(
        213_400,
        "train",
        "Training steps (Vasilev: 200 epochs; horse2zebra's 1,067 horses at batch 1 make 213,400).",
        ge=1,
    )

    @property
    def lambda_id(self) -> float:
        return self.lambda_id_ratio * self.lambda_cycle


DEMO = {
    # Offline and CPU-sized: 32px tiles of the bundled photos and their edge maps, slimmer networks.
    "dataset": "photos",
    "data_source": "offline",
    "image_size": 32,
    "photo_side": 128,
    "gf": 16,
    "df": 32,
    "batch_size": 4,
    "learning_rate": 1e-3,
    # 200 steps: about 1 step/s on 2 busy cores; cycle and identity losses fall by 60%.
    "steps": 200,
    "checkpoint_every": 50,
    "frame_every": 25,
}

TINY = {
    # 32px: at 16 the innermost blocks are 1x1, which instance normalisation zeroes.
    "image_size": 32,
    "photo_side": 64,
    "gf": 4,
    "df": 4,
    "batch_size": 2,
    "pool_size": 3,
    "steps": 4,
    "checkpoint_every": 2,
    "frame_every": 2,
    "samples": 2,
}


# ---------------------------------------------------------------------------------------------
# The history of generated images


class HistoryPool:
    """Zhu et al.'s image buffer: until it holds `size` fakes each new one is stored and passed
    on; then each new fake is, with probability 1/2, swapped for a random stored one (which is
    passed on instead). State in Keras variables (checkpointed); coin flips seeded per step."""

    def __init__(self, size: int, image_shape: tuple[int, int, int], name: str):
        import keras

        self.size = size
        self.images = keras.Variable(
            np.zeros((max(size, 1), *image_shape), np.float32), trainable=False, name=f"{name}_images"
        )
        self.count = keras.Variable(0, dtype="int32", trainable=False, name=f"{name}_count")

    @property
    def variables(self) -> dict[str, Any]:
        return {"images": self.images, "count": self.count}

    def query(self, fakes, seed):
        """Inside a compiled step: the images the discriminator sees instead of `fakes`.
        `seed` is a [2] int tensor (the run's seed and the step)."""
        import tensorflow as tf

        if self.size == 0:
            return fakes
        fakes = tf.stop_gradient(fakes)
        stored = tf.convert_to_tensor(self.images.value)
        count = tf.convert_to_tensor(self.count.value)
        shown = []
        for k in range(fakes.shape[0]):  # the batch size is fixed: unrolled, one image at a time
            flip_seed = tf.stack([seed[0], seed[1] * 64 + 2 * k])
            index_seed = tf.stack([seed[0], seed[1] * 64 + 2 * k + 1])
            filling = count < self.size
            swap = tf.logical_and(tf.logical_not(filling), tf.random.stateless_uniform([], flip_seed) < 0.5)
            index = tf.random.stateless_uniform([], index_seed, maxval=self.size, dtype=tf.int32)
            slot = tf.where(filling, count, index)
            shown.append(tf.where(swap, stored[index], fakes[k]))
            new = tf.where(tf.logical_or(filling, swap), fakes[k], stored[slot])
            stored = tf.tensor_scatter_nd_update(stored, [[slot]], new[None])
            count = tf.minimum(count + 1, self.size)
        self.images.assign(stored)
        self.count.assign(count)
        return tf.stack(shown)


# ---------------------------------------------------------------------------------------------
# Networks and the training step


class CycleGAN:
    """G (A -> B), F (B -> A), D_A, D_B, their optimizers and the history pools: built in a
    fixed order after seeding, so the same seed gives the same starting weights."""

    def __init__(self, p: CycleGANParams):
        import keras

        keras.utils.set_random_seed(p.seed)
        s = p.image_size
        self.g_ab = build_unet_generator(s, p.gf, "g_ab")
        self.g_ba = build_unet_generator(s, p.gf, "g_ba")
        self.d_a = build_patchgan(s, p.df, 3, "d_a")
        self.d_b = build_patchgan(s, p.df, 3, "d_b")
        self.g_vars = self.g_ab.trainable_variables + self.g_ba.trainable_variables
        self.d_vars = self.d_a.trainable_variables + self.d_b.trainable_variables
        self.g_opt, self.d_opt = adam(p, self.g_vars), adam(p, self.d_vars)
        self.pool_a = HistoryPool(p.pool_size, (s, s, 3), "pool_a")
        self.pool_b = HistoryPool(p.pool_size, (s, s, 3), "pool_b")

    @property
    def variables(self) -> dict[str, Any]:
        """Every weight, and the pools: what a checkpoint holds besides the optimizers' slots."""
        from models.toolkit.training import model_variables

        found = model_variables(g_ab=self.g_ab, g_ba=self.g_ba, d_a=self.d_a, d_b=self.d_b)
        for name, pool in (("pool_a", self.pool_a), ("pool_b", self.pool_b)):
            found.update({f"{name}/{k}": v for k, v in pool.variables.items()})
        return found


def make_train_step(gan: CycleGAN, p: CycleGANParams):
    """One compiled step on a batch of A and a batch of B: the generators' loss (adversarial +
    lambda_cycle * cycle + lambda_id * identity) and the discriminators' (MSE against 1 for
    real, 0 for the pool's fakes, halved as in Vasilev), both from the same forward pass."""
    import tensorflow as tf

    g_ab, g_ba, d_a, d_b = gan.g_ab, gan.g_ba, gan.d_a, gan.d_b

    def mse(x, target: float):
        return tf.reduce_mean(tf.square(x - target))

    def mae(x, y):
        return tf.reduce_mean(tf.abs(x - y))

    @tf.function(jit_compile=p.jit_compile, autograph=False)  # no tensor-dependent Python control flow
    def train_step(real_a, real_b, step):
        seed = tf.stack([tf.constant(p.seed, tf.int64), tf.cast(step, tf.int64)])
        n = tf.shape(real_a)[0]
        with tf.GradientTape() as tape:
            # Each network runs once per stage on the images it sees stacked into one batch
            # (instance normalisation is per image, so stacking changes nothing but the speed).
            fake_b, same_b = tf.split(g_ab(tf.concat([real_a, real_b], 0), training=True), 2)
            fake_a, same_a = tf.split(g_ba(tf.concat([real_b, real_a], 0), training=True), 2)
            cycle = mae(g_ba(fake_b, training=True), real_a) + mae(g_ab(fake_a, training=True), real_b)
            identity = mae(same_a, real_a) + mae(same_b, real_b)
            adversarial = mse(d_b(fake_b, training=True), 1.0) + mse(d_a(fake_a, training=True), 1.0)
            g_loss = adversarial + p.lambda_cycle * cycle + p.lambda_id * identity
        g_grads = tape.gradient(g_loss, gan.g_vars)
        # The discriminators judge fakes from the history pool (outside any tape: no gradient
        # flows into the generators from here, and the pool's bookkeeping is not recorded).
        past_a = gan.pool_a.query(fake_a, seed)
        past_b = gan.pool_b.query(fake_b, seed + tf.constant([0, 1 << 40], tf.int64))
        with tf.GradientTape() as tape:
            real_a_score, past_a_score = tf.split(d_a(tf.concat([real_a, past_a], 0), training=True), [n, n])
            real_b_score, past_b_score = tf.split(d_b(tf.concat([real_b, past_b], 0), training=True), [n, n])
            d_a_loss = 0.5 * (mse(real_a_score, 1.0) + mse(past_a_score, 0.0))
            d_b_loss = 0.5 * (mse(real_b_score, 1.0) + mse(past_b_score, 0.0))
            d_loss = d_a_loss + d_b_loss
        d_grads = tape.gradient(d_loss, gan.d_vars)
        gan.g_opt.apply_gradients(zip(g_grads, gan.g_vars, strict=True))
        gan.d_opt.apply_gradients(zip(d_grads, gan.d_vars, strict=True))
        return {
            "g_loss": g_loss,
            "adversarial": adversarial,
            "cycle": cycle,
            "identity": identity,
            "d_a_loss": d_a_loss,
            "d_b_loss": d_b_loss,
        }

    return train_step


def batches(domains: Mapping[str, np.ndarray], p: CycleGANParams, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Step `step`'s A and B batches, drawn independently (unpaired)."""
    a, _ = training_batch(domains["train_a"], p.batch_size, p.seed, step, 0, p.flip)
    b, _ = training_batch(domains["train_b"], p.batch_size, p.seed, step, 1, p.flip)
    return a, b


# ---------------------------------------------------------------------------------------------
# Steps


def vectorize(p: CycleGANParams, ctx: StepContext) -> dict[str, Any]:
    return vectorize_domains(p, ctx, paired=False)


def train(p: CycleGANParams, ctx: StepContext) -> dict[str, Any]:
    import tensorflow as tf

    from models.core.images import save_png, strip
    from models.toolkit.training import configure_runtime, shape_summary

    device = configure_runtime(
        p.device, p.mixed_precision, ctx.log, float32_only="CycleGAN trains in float32"
    )
    domains = load_domains(ctx.upstream["vectorize"])
    gan = CycleGAN(p)
    train_step = make_train_step(gan, p)
    to_b, to_a = translator(gan.g_ab), translator(gan.g_ba)
    preview_a, preview_b = domains["test_a"][:1], domains["test_b"][:1]

    def step(i) -> dict[str, Any]:
        a, b = batches(domains, p, int(i))
        return train_step(tf.constant(a), tf.constant(b), tf.constant(i, tf.int64))

    def snapshot(i: int) -> None:
        (ctx.out / FRAMES).mkdir(exist_ok=True)
        fake_b, fake_a = to_b(preview_a), to_a(preview_b)
        row = [preview_a[0], fake_b[0], to_a(fake_b)[0], preview_b[0], fake_a[0], to_b(fake_a)[0]]
        save_png(ctx.out / FRAMES / numbered_name("step", i + 1), strip([enlarged(im) for im in row]))

    summary = train_networks(
        p,
        ctx,
        gan,
        step,
        snapshot,
        device,
        {
            "generator_parameters": int(gan.g_ab.count_params()),
            "discriminator_parameters": int(gan.d_a.count_params()),
            **shape_summary(
                [gan.g_ab, gan.g_ba, gan.d_a, gan.d_b], (p.batch_size, p.image_size, p.image_size, 3)
            ),
        },
    )
    for name, file in WEIGHTS.items():
        getattr(gan, name).save_weights(ctx.out / file)
    return summary


def sample(p: CycleGANParams, ctx: StepContext) -> dict[str, Any]:
    """Translate the held-out images both ways and back; score translations against the truth
    where the held-out images are pairs, and the cycle's reconstructions always; the untrained
    generators (the same seed: the weights training started from) scored the same way."""
    from models.core.images import save_generated, save_png

    domains = load_domains(ctx.upstream["vectorize"])
    paired = load_meta(ctx.upstream["vectorize"])["test_paired"]
    test_a, test_b = domains["test_a"], domains["test_b"]
    gan = CycleGAN(p)
    to_b, to_a = translator(gan.g_ab), translator(gan.g_ba)
    found: dict[str, dict[str, dict[str, float]]] = {}
    for model in ("untrained", "trained"):
        if model == "trained":
            for name, file in WEIGHTS.items():
                getattr(gan, name).load_weights(ctx.upstream["train"] / file)
        fake_b, fake_a = to_b(test_a), to_a(test_b)
        rec_a, rec_b = to_a(fake_b), to_b(fake_a)
        pairs = {"a_to_b_to_a": (rec_a, test_a), "b_to_a_to_b": (rec_b, test_b)}
        if paired:
            pairs = {"a_to_b": (fake_b, test_b), "b_to_a": (fake_a, test_a), **pairs}
        for direction, (made, truth) in pairs.items():
            found.setdefault(direction, {})[model] = scores(made, truth)
            if model == "trained":
                found[direction]["blank"] = scores(blank_page(truth), truth)
    files = []
    n = min(p.samples, len(test_a), len(test_b))
    for kind, images in SHOWN.items():
        made = {"a_to_b": fake_b, "a_to_b_to_a": rec_a, "b_to_a": fake_a, "b_to_a_to_b": rec_b}[kind]
        for i in range(n):
            files.append(images.format(i + 1))
            save_png(ctx.out / files[-1], made[i])
    save_generated(ctx.out, fake_b, a_to_b_to_a=rec_a, b_to_a=fake_a, b_to_a_to_b=rec_b)
    trained_first = {
        d: {m: by_model[m] for m in ("trained", "untrained", "blank")} for d, by_model in found.items()
    }
    write_json_atomic(ctx.out / SCORES, {"paired": paired, "scores": trained_first})
    return {"files": files, "held_out": [len(test_a), len(test_b)]}


def report(p: CycleGANParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    found = json.loads((dirs["sample"] / SCORES).read_text())
    meta = load_meta(dirs["vectorize"])
    domains = load_domains(dirs["vectorize"])
    name_a, name_b = meta["domains"]
    n = len(list(dirs["sample"].glob("a_to_b-*.png")))
    shown = {
        kind: [load_image(dirs["sample"] / name.format(i + 1)) for i in range(n)]
        for kind, name in SHOWN.items()
    }
    aba = [(domains["test_a"][i], shown["a_to_b"][i], shown["a_to_b_to_a"][i]) for i in range(n)]
    bab = [(domains["test_b"][i], shown["b_to_a"][i], shown["b_to_a_to_b"][i]) for i in range(n)]
    metrics: dict[str, Any] = {k: v for k, v in final.items() if v is not None}
    metrics.update(score_metrics(found["scores"]))
    counts = meta["counts"]
    sections = [
        Note(
            f"Domain A: {name_a}; domain B: {name_b}. Trained on {counts['train_a']} A and "
            f"{counts['train_b']} B images (B shuffled: no pairs), {p.image_size}px; held out "
            f"{counts['test_a']} A and {counts['test_b']} B images"
            + (
                ", aligned pairs, so translations are scored against the truth."
                if found["paired"]
                else ", unpaired: only the cycle's reconstructions can be scored."
            )
        ),
        triplets(
            "A -> B -> A on held-out images: input, G(a), F(G(a))",
            "a_to_b_to_a.png",
            aba,
            ["A", "G(A)", "F(G(A))"],
        ),
        triplets(
            "B -> A -> B on held-out images: input, F(b), G(F(b))",
            "b_to_a_to_b.png",
            bab,
            ["B", "F(B)", "G(F(B))"],
        ),
        scores_table(
            "Held-out scores: trained and untrained generators, and a blank page of the truths' median "
            "colour (L1 on a 0..1 scale, PSNR in dB)",
            found["scores"],
        ),
        loss_curve(
            "Cycle and identity losses per step", "cycle_identity.png", history, ["cycle", "identity"]
        ),
        loss_curve(
            "Adversarial losses per step (generators and discriminators, MSE)",
            "adversarial.png",
            history,
            ["adversarial", "d_a_loss", "d_b_loss"],
        ),
    ]
    animation = frames_section("The first held-out A and B through the cycle during training", dirs["train"])
    if animation:
        sections.insert(3, animation)
    sections.append(
        Note(
            f"U-Net generators (gf={p.gf}, {final['generator_parameters']} parameters each), PatchGAN "
            f"discriminators (df={p.df}, {final['discriminator_parameters']} parameters each, "
            f"{p.image_size // 16}x{p.image_size // 16} patches); lambda_cycle={p.lambda_cycle}, "
            f"lambda_id={p.lambda_id:g}, Adam({p.learning_rate:g}, {p.beta_1}), batch {p.batch_size}, "
            f"history pool of {p.pool_size}; {final['steps']} steps."
        )
    )
    return Report(
        title=f"cyclegan: unpaired translation between {name_a} and {name_b}",
        metrics=metrics,
        sections=sections,
        history={
            k: history[k] for k in ("g_loss", "adversarial", "cycle", "identity", "d_a_loss", "d_b_loss")
        },
        quality=quality_record(found),
    )


def quality_record(found: Mapping[str, Any]) -> Quality:
    """A -> B against the true B when the held-out images are pairs (the cycle A -> B -> A as a
    further check); unpaired, the cycle is all there is to score."""
    scores_ = found["scores"]
    if not found["paired"]:
        return ssim_quality(scores_, "a_to_b_to_a", "A -> B -> A reconstruction", CYCLE_SSIM_FLOOR)
    cycle = scores_["a_to_b_to_a"]["trained"]["ssim"]
    check = Check("ssim_a_to_b_to_a", cycle, CYCLE_SSIM_FLOOR, what="A -> B -> A reconstruction SSIM")
    return ssim_quality(scores_, "a_to_b", "A -> B translation", SSIM_FLOOR, (check,))


register(
    Technique(
        name="cyclegan",
        summary="unpaired image-to-image translation with cycle consistency (Zhu et al.; Vasilev 5)",
        params_model=CycleGANParams,
        inputs={"data": Input(lambda p: p.dataset, source="data_source")},
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("l1_a_to_b_to_a", "ssim_a_to_b", "psnr_a_to_b", "l1_a_to_b"),
        history_x="step",
        plots={
            "generator losses": ("cycle", "identity"),
            "adversarial": ("adversarial", "d_a_loss", "d_b_loss"),
        },
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {
                "steps": 4,
                "checkpoint_every": 4,
                "frame_every": 4,
                "samples": 2,
                "max_images": 4,
                "pool_size": 4,
            }
        ),
        module=__name__,
    )
)
