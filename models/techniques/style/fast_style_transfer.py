"""Fast (feed-forward) neural style transfer (Johnson et al. 2016, "Perceptual losses for
real-time style transfer"; the answer Vasilev's chapter points to for slow optimisation NST).

An image-transformation network (reflection-padded convolutions, two stride-2 convolutions
down, residual blocks, two nearest-neighbour upsamplings + convolutions up, instance
normalisation = `GroupNormalization(groups=-1)`) is trained once per style on random crops of a
set of content photos, with the same perceptual losses as optimisation NST
(perceptual.py). Afterwards any image, of any size, is stylised in one forward pass (the
network is fully convolutional). The sample step also runs a short optimisation NST on the same
content and style (style_transfer.py) and scores both results with the same loss, so the
report shows what the speed costs.

Content photos: the full profile trains on COCO 2014's 82,783 training images, as Johnson et al.
do (the catalog's `coco_train2014`, a 13 GB zip); the demo on the bundled `photos` (four photos,
offline). The vectorize step streams them: each photo is resized and stored as its own array
file, so memory holds one photo at a time whatever the size of the set.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import model_validator

from models.core.errors import GdlError
from models.core.files import numbered_files, numbered_name, write_json_atomic
from models.core.params import param, source_param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Quality
from models.reporting.report import Animation, Curve, Grid, Note, Report, Table
from models.techniques.style.perceptual import PerceptualLoss
from models.techniques.style.photos import PHOTOS, load_photos, random_crops
from models.techniques.style.style_transfer import (
    STYLE_LOSS_DEMO,
    Objective,
    StyleLossParams,
    build_loss,
    loss_weights,
    make_step,
)
from models.toolkit.backbones import preprocess_tensor, weights_entry

STYLE, NETWORK, HISTORY, FRAMES = (
    "style.npy",
    "transformer.weights.h5",
    "history.json",
    "frames",
)
COMPARISON = "comparison.json"
DOWNSCALE = 4  # two stride-2 convolutions: sides must be multiples of 4 to come back the same size


class FastStyleTransferParams(StyleLossParams):
    content: str = param(
        "coco_train2014",
        "download",
        "Content photos to train on: a catalog entry (Johnson et al.: COCO 2014's training images).",
    )
    content_source: str = source_param("the content photos to train on", own="a folder, file or archive")
    max_photos: int = param(
        0, "vectorize", "Use only the first this many content photos, in file-name order (0: all).", ge=0
    )
    sample_photos: int = param(
        8, "sample", "Photos the sample step stylises (the first ones, in file-name order).", ge=1
    )
    image_size: int = param(
        256, "vectorize", "Side of the square training crops (Johnson et al.: 256).", ge=16
    )
    photo_side: int = param(
        288, "vectorize", "Photos are resized to this shorter side, then cropped at random.", ge=16
    )
    sample_side: int = param(
        512, "vectorize", "Longest side of the photos stylised by the sample step.", ge=8
    )
    base_filters: int = param(
        32, "train", "Filters of the first convolution, doubled twice (Johnson et al.: 32).", ge=1
    )
    residual_blocks: int = param(5, "train", "Residual blocks (Johnson et al.: 5).", ge=0)
    input_skip: bool = param(
        False,
        "train",
        "Add the network's output to its input, so it starts as the identity (not in Johnson et al.; "
        "lets a short CPU run learn a stylisation).",
    )
    batch_size: int = param(4, "train", "Crops per training step (Johnson et al.: 4).", ge=1)
    steps: int = param(40_000, "train", "Training steps (Johnson et al.: 2 epochs of COCO at batch 4).", ge=1)
    learning_rate: float = param(1e-3, "train", "Adam learning rate (Johnson et al.: 1e-3).", gt=0)
    checkpoint_every: int = param(500, "train", "Steps between checkpoints.", ge=1)
    frame_every: int = param(2000, "train", "Steps between frames of the first photo stylised.", ge=1)
    compare_iterations: int = param(
        20,
        "sample",
        "Outer L-BFGS iterations of the optimisation NST it is compared with (Chollet 8.3: 20).",
        ge=1,
    )
    compare_evaluations: int = param(
        20, "sample", "Loss evaluations per L-BFGS iteration (Chollet 8.3: 20).", ge=1
    )

    @model_validator(mode="after")
    def _crops_fit(self):
        if self.photo_side < self.image_size:
            raise ValueError(
                f"photo_side ({self.photo_side}) must be at least image_size ({self.image_size})"
            )
        return self


DEMO = {
    # Offline and CPU-sized: the bundled photos, 96 px crops, a slimmer network, MobileNetV2's
    # ImageNet weights and the layers and weights of style_transfer's demo.
    **STYLE_LOSS_DEMO,
    "content": "photos",
    "content_source": "offline",
    "image_size": 96,
    "photo_side": 128,
    "sample_side": 128,
    "base_filters": 16,
    "residual_blocks": 3,
    # 250 steps instead of 40,000: the network starts as the identity and learns a residual.
    # Measured (style loss of one pass / the optimisation's): 80 steps at 5e-3 8.5x (the
    # content with cyan blotches), 250 at 5e-3 3.2x, 250 at 2e-3 1.1x (stylised like it).
    "input_skip": True,
    "steps": 250,
    "learning_rate": 2e-3,
    "checkpoint_every": 50,
    "frame_every": 50,
    "compare_iterations": 3,
}

TINY = {
    "image_size": 32,
    "photo_side": 40,
    "sample_side": 40,
    "base_filters": 4,
    "residual_blocks": 1,
    "batch_size": 2,
    "steps": 4,
    "checkpoint_every": 2,
    "frame_every": 2,
    "compare_iterations": 1,
    "compare_evaluations": 3,
}


# ---------------------------------------------------------------------------------------------
# Data


def vectorize(p: FastStyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import center_crop, load_image, resize
    from models.inputs.formats import image_files

    folder = ctx.inputs["photos"]
    files = image_files(folder)
    if p.max_photos:
        files = files[: p.max_photos]
    if not files:
        raise GdlError(f"content photos {folder.name} hold no images")
    (ctx.out / PHOTOS).mkdir()
    for i, f in enumerate(files):  # one photo in memory at a time: COCO is 82,783 of them
        image = load_image(
            f, max_pixels=p.max_pixels, origin=f"content photo {f.relative_to(folder).as_posix()}"
        )
        h, w = image.shape[:2]
        photo = resize(image, height=p.photo_side) if h <= w else resize(image, width=p.photo_side)
        np.save(ctx.out / PHOTOS / f"photo_{i:06d}.npy", photo, allow_pickle=False)
        ctx.progress(i + 1, len(files), {})
    from models.inputs.catalog import named_source

    shown = f"style image {named_source(p.style, p.style_source)}"
    style = load_image(ctx.inputs["style"], max_pixels=p.max_pixels, origin=shown)
    side = min(style.shape[:2])
    style = resize(center_crop(style, side, side), size=(p.image_size, p.image_size))
    np.save(ctx.out / STYLE, style, allow_pickle=False)
    write_json_atomic(ctx.out / "meta.json", {"photos": [f.relative_to(folder).as_posix() for f in files]})
    return {"photos": len(files), "photo_side": p.photo_side}


# ---------------------------------------------------------------------------------------------
# The image-transformation network


@functools.cache
def _reflection_pad_layer():
    import keras

    @keras.saving.register_keras_serializable(package="gdl")
    class ReflectionPadding2D(keras.layers.Layer):
        """Mirror padding (no zero borders for the style loss to paint over)."""

        def __init__(self, pad: int, **kwargs):
            super().__init__(**kwargs)
            self.pad = pad

        def call(self, x):
            p = self.pad
            return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

        def get_config(self):
            return {**super().get_config(), "pad": self.pad}

    return ReflectionPadding2D


def instance_norm(name: str):
    """Instance normalisation: one group per channel, statistics per image."""
    import keras

    return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def build_transformer(base_filters: int = 32, residual_blocks: int = 5, input_skip: bool = False):
    """Johnson et al.'s network: RGB 0..255 in, RGB 0..255 out, any size divisible by 4.

    Upsampling is nearest-neighbour + convolution rather than fractionally-strided convolution
    (no checkerboard artefacts; Odena et al. 2016). With `input_skip` the network's output is
    added to its input (not in Johnson et al.): the untrained network is close to the identity,
    so a short training run learns a stylisation instead of first learning to reproduce the
    photo (which takes thousands of steps)."""
    import keras
    from keras import layers

    pad = _reflection_pad_layer()

    def conv(x, filters, kernel, stride, name, norm=True, relu=True):
        x = pad(kernel // 2, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, name=name)(x)
        if norm:
            x = instance_norm(f"{name}_in")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    f = base_filters
    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit")(inputs)
    x = conv(x, f, 9, 1, "down_1")
    x = conv(x, 2 * f, 3, 2, "down_2")
    x = conv(x, 4 * f, 3, 2, "down_3")
    for i in range(residual_blocks):
        y = conv(x, 4 * f, 3, 1, f"res_{i + 1}_a")
        y = conv(y, 4 * f, 3, 1, f"res_{i + 1}_b", relu=False)
        x = layers.Add(name=f"res_{i + 1}")([x, y])
    for i, filters in enumerate((2 * f, f)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up_{i + 1}_resize")(x)
        x = conv(x, filters, 3, 1, f"up_{i + 1}")
    x = conv(x, 3, 9, 1, "out", norm=False, relu=False)
    outputs = layers.Activation("tanh", name="tanh")(x)
    if input_skip:
        outputs = layers.Add(name="plus_input")([inputs, layers.Rescaling(127.5, name="to_rgb")(outputs)])
    else:
        outputs = layers.Rescaling(127.5, offset=127.5, name="to_rgb")(outputs)
    return keras.Model(inputs, outputs, name="transformer")


class Stylizer:
    """One compiled forward pass for any image size: reflection-padded up to a multiple of 4,
    stylised, cropped back."""

    def __init__(self, net):
        import tensorflow as tf

        def forward(images):
            h, w = tf.shape(images)[1], tf.shape(images)[2]
            ph, pw = (-h) % DOWNSCALE, (-w) % DOWNSCALE
            padded = tf.pad(images, [[0, 0], [0, ph], [0, pw], [0, 0]], mode="REFLECT")
            return net(padded, training=False)[:, :h, :w, :]

        self.forward = tf.function(
            forward, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 or float RGB (H, W, 3) or (N, H, W, 3) -> uint8 RGB of the same shape."""
        x = np.asarray(rgb, np.float32)
        out = self.forward(x[None] if x.ndim == 3 else x).numpy()
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
        return out[0] if x.ndim == 3 else out


def make_train_step(net, loss: PerceptualLoss, backbone: str, optimizer, jit_compile: bool = False):
    """One compiled step: content targets from the batch itself, perceptual loss of the
    network's output, Adam on the network's weights. Returns the loss terms."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        target = tf.stop_gradient(loss.content_features(preprocess_tensor(backbone, batch)))
        with tf.GradientTape() as tape:
            out = net(batch, training=True)
            parts = loss(preprocess_tensor(backbone, out), target)
        grads = tape.gradient(parts["total"], net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return parts

    return train_step


# ---------------------------------------------------------------------------------------------
# Steps


def train(p: FastStyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    import keras

    from models.core.images import save_png
    from models.toolkit.training import configure_runtime, optimize_resumable, shape_summary, step_summary

    device = configure_runtime(
        p.device, p.mixed_precision, ctx.log, float32_only="the perceptual loss is computed in float32"
    )
    photos = load_photos(ctx.upstream["vectorize"])
    style = np.load(ctx.upstream["vectorize"] / STYLE)
    keras.utils.set_random_seed(p.seed)  # the same network (and random backbone) on resume
    # Loaded before anything is written: weights that do not fit leave the slot empty.
    loss, described = build_loss(
        p.backbone, ctx.inputs.get("weights"), p.content_layer, p.style_layers, loss_weights(p), style
    )
    net = build_transformer(p.base_filters, p.residual_blocks, p.input_skip)
    optimizer = keras.optimizers.Adam(learning_rate=p.learning_rate)
    train_step = make_train_step(net, loss, p.backbone, optimizer, p.jit_compile)
    stylize = Stylizer(net)
    preview = photos[0][: p.image_size * 2, : p.image_size * 2]
    frames = ctx.out / FRAMES

    def step(i) -> dict[str, Any]:
        return train_step(random_crops(photos, p.image_size, p.batch_size, p.seed, int(i)))

    def snapshot(i: int) -> None:
        frames.mkdir(exist_ok=True)
        save_png(frames / numbered_name("step", i + 1), stylize(preview))

    t0 = time.perf_counter()
    result = optimize_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        variables={f"{i:04d}": v for i, v in enumerate(net.weights)},
        optimizer=optimizer,
        step=step,
        iterations=p.steps,
        checkpoint_every=p.checkpoint_every,
        snapshot_every=p.frame_every,
        snapshot=snapshot,
        progress=ctx.progress,
        log=ctx.log,
        budget=ctx.budget,
        label="step",
    )
    seconds = time.perf_counter() - t0
    net.save_weights(ctx.out / NETWORK)
    history = result["history"]
    last = slice(-min(10, len(history["total"])), None)
    final = {
        "train_loss": float(np.mean(history["total"][last])),
        "train_content_loss": float(np.mean(history["content"][last])),
        "train_style_loss": float(np.mean(history["style"][last])),
        "first_train_loss": history["total"][0],
        **step_summary(result, seconds),
        "network_parameters": int(net.count_params()),
        **shape_summary([net], (p.batch_size, p.image_size, p.image_size, 3)),
        "device": device,
    }
    write_json_atomic(ctx.out / HISTORY, {"final": final, "history": history, "weights": described})
    return {k: v for k, v in final.items() if v is not None}


STYLE_LOSS_RATIO = 2.0  # the demo's floor: feed-forward style loss at most 2x the optimisation's


def _same_size(images: list[np.ndarray]) -> bool:
    return len({im.shape for im in images}) == 1


def sample(p: FastStyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    """Stylise the first `sample_photos` photos in one forward pass each; run optimisation NST
    on the first for comparison, and score both with the same perceptual loss."""
    import keras

    from models.core.images import load_image, resize, save_generated, save_png
    from models.toolkit.backbones import deprocess, preprocess

    processed = ctx.upstream["vectorize"]
    photos = [resize(ph, max_side=p.sample_side) for ph in load_photos(processed)[: p.sample_photos]]
    keras.utils.set_random_seed(p.seed)  # the network training started from: the untrained point
    net = build_transformer(p.base_filters, p.residual_blocks, p.input_skip)
    untrained = Stylizer(net)(photos[0])
    net.load_weights(ctx.upstream["train"] / NETWORK)
    stylize = Stylizer(net)
    stylize(photos[0])  # trace and compile once, not timed
    files, forward = [], []
    for i, photo in enumerate(photos):
        t0 = time.perf_counter()
        out = stylize(photo)
        forward.append(time.perf_counter() - t0)
        files.append(f"stylised-{i + 1:02d}.png")
        save_png(ctx.out / files[-1], out)

    # The same content and style through optimisation NST, scored by the same loss (the style
    # image resized to the content's size, as style_transfer does).
    content = photos[0]
    style_full = load_image(ctx.inputs["style"], max_pixels=p.max_pixels)
    style = resize(style_full, size=content.shape[:2])
    keras.utils.set_random_seed(p.seed)
    loss, _ = build_loss(
        p.backbone, ctx.inputs.get("weights"), p.content_layer, p.style_layers, loss_weights(p), style
    )
    objective = Objective(loss, preprocess(p.backbone, content), p.jit_compile)
    image = keras.Variable(preprocess(p.backbone, content)[None])
    nst_step = make_step(objective, image, "lbfgs", p.compare_evaluations)
    nst_seconds = 0.0
    for i in range(p.compare_iterations):
        nst_seconds += nst_step(i)["seconds"]
    optimised = deprocess(p.backbone, image.numpy()[0])
    feed_forward = load_image(ctx.out / files[0])
    save_png(ctx.out / "optimised.png", optimised)
    scores = {
        name: objective.parts(preprocess(p.backbone, picture))
        for name, picture in (
            ("content", content),
            ("untrained", untrained),
            ("optimisation", optimised),
            ("feed_forward", feed_forward),
        )
    }
    comparison = {
        "scores": scores,
        "forward_seconds": float(np.median(forward)),
        "optimisation_seconds": nst_seconds,
        "optimisation_evaluations": objective.evaluations,
        "speedup": nst_seconds / max(float(np.median(forward)), 1e-9),
        "size": list(content.shape[:2]),
    }
    write_json_atomic(ctx.out / COMPARISON, comparison)
    save_generated(
        ctx.out,
        np.stack([load_image(ctx.out / f) for f in files]) if _same_size(photos) else feed_forward[None],
    )
    ctx.log(
        f"one forward pass {comparison['forward_seconds'] * 1000:.0f} ms vs optimisation "
        f"{nst_seconds:.1f} s ({comparison['speedup']:.0f}x) at {content.shape[1]}x{content.shape[0]}"
    )
    return {"files": [*files, "optimised.png"], "speedup": comparison["speedup"]}


def report(p: FastStyleTransferParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image, resize

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    comparison = json.loads((dirs["sample"] / COMPARISON).read_text())
    scores = comparison["scores"]
    names = json.loads((dirs["vectorize"] / "meta.json").read_text())["photos"]
    photos = load_photos(dirs["vectorize"])
    stylised = [load_image(f) for f in sorted(dirs["sample"].glob("stylised-*.png"))]
    content = resize(photos[0], max_side=p.sample_side)
    style = np.load(dirs["vectorize"] / STYLE)
    frame_files = numbered_files(dirs["train"] / FRAMES, "step")

    def caption(name: str, label: str) -> str:
        s = scores[name]
        return f"{label}: style {s['style']:.3g}, content {s['content']:.3g}"

    w = loss_weights(p)
    metrics = {
        **{k: v for k, v in final.items() if v is not None},
        "forward_seconds": comparison["forward_seconds"],
        "optimisation_seconds": comparison["optimisation_seconds"],
        "speedup_vs_optimisation": comparison["speedup"],
        "feed_forward_total_loss": scores["feed_forward"]["total"],
        "feed_forward_style_loss": scores["feed_forward"]["style"],
        "feed_forward_content_loss": scores["feed_forward"]["content"],
        "optimisation_total_loss": scores["optimisation"]["total"],
        "optimisation_style_loss": scores["optimisation"]["style"],
        "optimisation_content_loss": scores["optimisation"]["content"],
    }
    h, wd = comparison["size"]
    optimisation_style = scores["optimisation"]["style"]
    quality = Quality(
        metric="feed_forward_style_loss",
        value=scores["feed_forward"]["style"],
        untrained=scores["untrained"]["style"],
        reference=optimisation_style,
        value_floor=STYLE_LOSS_RATIO * optimisation_style,
        higher_is_better=False,
        label="feed-forward style loss",
        untrained_is="the untrained network",
        reference_is=f"optimisation NST on the same photo ({p.compare_iterations} L-BFGS iterations)",
    )
    metrics["untrained_style_loss"] = scores["untrained"]["style"]
    return Report(
        title=f"fast_style_transfer: feed-forward style transfer (Johnson et al., {p.backbone} loss network)",
        quality=quality,
        main_image="stylised.png",
        metrics=metrics,
        sections=[
            Grid(
                "Content, style, optimisation NST and the feed-forward network, scored by the same loss",
                "comparison.png",
                [content, style, load_image(dirs["sample"] / "optimised.png"), stylised[0]],
                [
                    "content",
                    "style",
                    caption("optimisation", f"optimisation {comparison['optimisation_seconds']:.1f}s"),
                    caption("feed_forward", f"one pass {comparison['forward_seconds'] * 1000:.0f}ms"),
                ],
                cols=4,
            ),
            Grid("Every content photo, one forward pass each", "stylised.png", stylised, names),
            Animation(
                "The first photo through the network during training",
                "training.gif",
                [load_image(f) for _, f in frame_files] or stylised[:1],
                [f"step {step}" for step, _ in frame_files] if frame_files else None,
            ),
            Curve(
                "Training loss per step (terms as they enter the total)",
                "loss.png",
                {
                    "total": history["total"],
                    "content x weight": [w.content * v for v in history["content"]],
                    "style x weight": [w.style * v for v in history["style"]],
                    "tv x weight": [w.total_variation * v for v in history["tv"]],
                },
                x="step",
                y="weighted loss",
                log_y=True,
            ),
            Table(
                f"Optimisation vs feed-forward at {wd}x{h} (same loss, same weights)",
                [
                    {"image": name, **{k: v for k, v in scores[name].items()}}
                    for name in ("content", "untrained", "optimisation", "feed_forward")
                ],
            ),
            Note(
                f"Loss network {p.backbone}; content layer {p.content_layer}; style layers "
                f"{', '.join(p.style_layers)}; weights content {p.content_weight}, style {p.style_weight}, "
                f"total variation {p.tv_weight}. Transformation network: {p.base_filters}-"
                f"{2 * p.base_filters}-{4 * p.base_filters} filters, {p.residual_blocks} residual blocks"
                + (", output added to the input" if p.input_skip else "")
                + ", "
                f"{final['network_parameters']} parameters, trained {final['steps']} steps of "
                f"{p.batch_size} random {p.image_size}px crops of {len(names)} photos. "
                f"One forward pass takes {comparison['forward_seconds'] * 1000:.0f} ms; the optimisation NST "
                f"({p.compare_iterations} L-BFGS iterations, {comparison['optimisation_evaluations']} "
                f"evaluations) {comparison['optimisation_seconds']:.1f} s: {comparison['speedup']:.0f}x."
            ),
        ],
        history={k: history[k] for k in ("total", "content", "style", "tv")},
        weights=saved["weights"],
    )


register(
    Technique(
        name="fast_style_transfer",
        summary="feed-forward style transfer: a network trained with perceptual losses (Johnson et al.)",
        params_model=FastStyleTransferParams,
        inputs={
            "photos": Input(lambda p: p.content, source="content_source"),
            "style": Input(lambda p: p.style, source="style_source"),
            "weights": Input(lambda p: weights_entry(p.backbone), source="weights_source", optional=True),
        },
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("feed_forward_total_loss", "speedup_vs_optimisation", "train_loss"),
        history_x="step",
        plots={"losses": ("total", "content", "style", "tv")},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {
                "steps": 4,
                "checkpoint_every": 4,
                "frame_every": 4,
                "max_photos": 6,
                "sample_photos": 1,
                "compare_iterations": 1,
                "compare_evaluations": 2,
            }
        ),
        module=__name__,
    )
)
