"""DeepDream: gradient ascent on a photo to excite chosen layers of an ImageNet convnet (Chollet 8.2).

The loss is a weighted sum of the mean squared activations of a few layers (borders excluded, so
the padding's edge effects do not dominate). One compiled step computes its gradient with respect
to the image, normalises it by its mean absolute value and moves the image up by `step_size`. The image
is processed in octaves, smallest first: it is dreamed on, upscaled by `octave_scale`, and the
detail lost by shrinking (the original at this size minus the upscaled shrunk original) is put back
(the book's order: after each octave's ascent). An octave stops early once its loss exceeds
`max_loss`, before the step that would take it there is applied (as in the book).

The step is a `tf.function` with an input signature of unknown height and width, so the octaves
(one shape each) share one trace. Each octave is an `optimize_resumable` loop checkpointed in a
folder of its own (`octave-N/` in the train slot): a killed run resumes in the octave it was in,
the finished octaves restored from their checkpoints.

Full profile (the book): InceptionV3 with `mixed2: 0.2, mixed3: 3.0, mixed4: 2.0, mixed5: 1.5`,
step 0.01, 20 iterations per octave, 3 octaves of scale 1.4, max_loss 10, on keras-io's sky photo.

Demo profile: the offline ImageNet MobileNetV2 on scikit-image's Chelsea the cat. Its layers play
the roles of Inception's mixed2..mixed5: `block_5` (stride 8, 32 channels: edges and small
textures, a light weight as mixed2 has), `block_9` and `block_12` (stride 16, 64 and 96 channels:
eyes, fur and scale-like motifs, the visible "dream" patterns, weighted most) and `block_14`
(stride 32, 160 channels: larger object parts, a medium weight). Block outputs are the linear
(residual) projections, not the ReLU6 activations inside a block, which saturate at 6 and stop the
gradient. MobileNetV2's input is standardised per channel (std about 0.23 of the 0..1 range, not
Inception's 2/255 units), so its step is larger to move the pixels as visibly.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from models.core.errors import GdlError
from models.core.files import numbered_files, numbered_name, write_json_atomic
from models.core.params import (
    TechniqueParams,
    max_pixels_param,
    param,
    source_param,
    weights_source_param,
)
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Quality
from models.reporting.report import Animation, Curve, Grid, Image, Note, Report, Table
from models.toolkit.backbones import weights_entry

IMAGE = "image.npy"  # the photo at the working size, uint8 RGB (vectorize)
DREAM = "dream.png"
HISTORY = "history.json"
FRAMES = "frames"

BOOK_LAYERS = {"mixed2": 0.2, "mixed3": 3.0, "mixed4": 2.0, "mixed5": 1.5}
DEMO_LAYERS = {"block_5": 0.5, "block_9": 2.0, "block_12": 2.0, "block_14": 1.0}


class DeepDreamParams(TechniqueParams):
    image: str = param(
        "sky",
        "download",
        "Catalog image to dream on (Chollet 8.2 uses the reader's own photo; keras-io's sky).",
    )
    image_source: str = source_param("the image")
    backbone: Literal["inception_v3", "mobilenet_v2", "vgg19"] = param(
        "inception_v3", "download", "ImageNet convnet whose layers are excited (Chollet 8.2: InceptionV3)."
    )
    weights_source: str = weights_source_param("the backbone's ImageNet weights")
    max_pixels: int = max_pixels_param(16_000_000)
    max_side: int | None = param(
        None,
        "vectorize",
        "Shrink the image to fit this longest side (null: as given; Chollet 8.2: 300-400 px works best).",
        ge=8,
    )
    layers: dict[str, float] = param(
        BOOK_LAYERS,
        "train",
        "Layer -> coefficient of its mean squared activation in the loss "
        "(Chollet 8.2: mixed2 0.2, mixed3 3.0, mixed4 2.0, mixed5 1.5).",
    )
    border: int = param(
        2, "train", "Activation pixels excluded at each border from the loss (Chollet 8.2: 2).", ge=0
    )
    step_size: float = param(
        0.01, "train", "Gradient-ascent step on the preprocessed image (Chollet 8.2: 0.01).", gt=0
    )
    iterations: int = param(20, "train", "Ascent steps per octave (Chollet 8.2: 20).", ge=1)
    num_octave: int = param(3, "train", "Number of scales (Chollet 8.2: 3).", ge=1, le=20)
    octave_scale: float = param(1.4, "train", "Size ratio between octaves (Chollet 8.2: 1.4).", gt=1, le=10)
    max_loss: float | None = param(
        10.0, "train", "Stop an octave once its loss exceeds this (Chollet 8.2: 10; null: never).", gt=0
    )
    checkpoint_every: int = param(5, "train", "Steps between checkpoints within an octave.", ge=1)
    frame_every: int = param(5, "train", "Steps between animation frames within an octave.", ge=1)

    @model_validator(mode="after")
    def _known_layers(self) -> DeepDreamParams:
        if not self.layers:
            raise ValueError("layers: give at least one layer and its coefficient")
        bad = {k: v for k, v in self.layers.items() if not np.isfinite(v)}
        if bad:
            raise ValueError(f"layers: coefficients must be finite numbers (got {bad})")
        from models.toolkit.backbones import check_layers

        try:
            check_layers(self.backbone, list(self.layers))
        except ValueError as exc:
            raise ValueError(f"layers: {exc}") from None
        return self


DEMO = {
    "image": "chelsea",
    "image_source": "offline",
    "backbone": "mobilenet_v2",
    "weights_source": "offline",
    "max_side": 320,
    "layers": DEMO_LAYERS,
    "step_size": 0.02,
    "iterations": 15,
    "max_loss": 20.0,
}
TINY = {"max_side": 64, "iterations": 3, "num_octave": 2, "checkpoint_every": 2, "frame_every": 2}


ACTIVATIONS = ("dream_activation", "original_activation", "plain_ascent_activation")
# The demo's floor: a quarter of the activation plain ascent gains. The octaves trade activation
# for patterns at every scale (the demo measured 0.42); an image that barely moved scores ~0.
ACTIVATION_SCORE_FLOOR = 0.25

# ---------------------------------------------------------------------------------------------
# Octaves


def octave_shapes(shape: Sequence[int], num_octave: int, octave_scale: float) -> list[tuple[int, int]]:
    """(height, width) of each octave, smallest first, the last one `shape` (the book's sizes:
    each side divided by octave_scale**i and truncated)."""
    h, w = int(shape[0]), int(shape[1])
    shapes = [(int(h / octave_scale**i), int(w / octave_scale**i)) for i in range(num_octave)]
    return shapes[::-1]


def resize_float(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float (H, W, C) image resized to (height, width), values outside 0..255 kept."""
    from models.core.images import resize

    if tuple(x.shape[:2]) == tuple(shape):
        return np.array(x, np.float32)
    return resize(np.asarray(x, np.float32), size=tuple(shape))


def run_octaves(
    original: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    ascend: Callable[[int, np.ndarray], np.ndarray],
    after_octave: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The octave loop: upscale, `ascend(octave, image)`, re-inject the detail lost by shrinking.

    `original` is the preprocessed image at the last (largest) shape. With an `ascend` that does
    nothing, the result is the original again: the re-injected details add up to exactly what
    shrinking took away.
    """
    shrunk_original = resize_float(original, shapes[0])
    image = shrunk_original
    for k, shape in enumerate(shapes):
        image = ascend(k, resize_float(image, shape))
        same_size_original = resize_float(original, shape)
        lost_detail = same_size_original - resize_float(shrunk_original, shape)
        image = image + lost_detail
        shrunk_original = same_size_original
        if after_octave:
            after_octave(k, image)
    return image


# ---------------------------------------------------------------------------------------------
# The compiled ascent step


def dream_loss(activations: Mapping[str, Any], layers: Mapping[str, float], border: int):
    """Weighted sum of each layer's mean squared activation, `border` pixels left out per side
    (fewer when the map is too small to keep anything otherwise)."""
    import tensorflow as tf

    loss = tf.constant(0.0, tf.float32)
    for name, coeff in layers.items():
        act = tf.cast(activations[name], tf.float32)
        h, w = tf.shape(act)[1], tf.shape(act)[2]
        bh = tf.minimum(border, (h - 1) // 2)
        bw = tf.minimum(border, (w - 1) // 2)
        inner = act[:, bh : h - bh, bw : w - bw, :]
        loss += coeff * tf.reduce_mean(tf.square(inner))
    return loss


def make_ascent_step(
    features, layers: Mapping[str, float], border: int, step: float, jit_compile: bool = False
):
    """A compiled `image -> (loss, image moved up the normalised gradient)`, traced once for any
    image size (the input signature leaves height and width unknown)."""
    return _ascent_step(features, layers, border, step, jit_compile)


def _ascent_step(features, layers: Mapping[str, float], border: int, step: float, jit_compile: bool):
    import tensorflow as tf

    layers = {k: float(v) for k, v in layers.items()}

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)], jit_compile=jit_compile)
    def ascent_step(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            out = features(image)
            if not isinstance(out, dict):  # a single-layer feature model returns the tensor
                out = {next(iter(layers)): out}
            loss = dream_loss(out, layers, border)
        grads = tape.gradient(loss, image)
        grads /= tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-7)
        return loss, image + step * grads

    return ascent_step


# ---------------------------------------------------------------------------------------------
# Steps


def vectorize(p: DeepDreamParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import load_image, resize
    from models.inputs.catalog import named_source
    from models.toolkit.backbones import MIN_SIDE

    named = named_source(p.image, p.image_source)  # load_image's errors say "image <named> ..."
    photo = load_image(ctx.inputs["image"], max_pixels=p.max_pixels, origin=named)
    if p.max_side:
        photo = resize(photo, max_side=p.max_side)
    smallest = octave_shapes(photo.shape[:2], p.num_octave, p.octave_scale)[0]
    need = MIN_SIDE[p.backbone]
    if min(smallest) < need:
        raise GdlError(
            f"image {named} is {photo.shape[1]}x{photo.shape[0]} at the working size, so its smallest "
            f"octave is {smallest[1]}x{smallest[0]}; {p.backbone} needs at least {need} px a side: "
            f"use a larger image or max_side, or fewer octaves (num_octave={p.num_octave})"
        )
    np.save(ctx.out / IMAGE, photo, allow_pickle=False)
    return {"height": int(photo.shape[0]), "width": int(photo.shape[1])}


def train(p: DeepDreamParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import save_png
    from models.toolkit.backbones import deprocess, feature_model, load_backbone, preprocess
    from models.toolkit.training import configure_runtime, optimize_resumable, shape_summary

    # Everything that can refuse the inputs runs before the first file is written.
    configure_runtime(p.device, p.mixed_precision, ctx.log)
    backbone, weights = load_backbone(p.backbone, ctx.inputs.get("weights"), include_top=False)
    features = feature_model(backbone, list(p.layers))
    photo = np.load(ctx.upstream["vectorize"] / IMAGE)
    original = preprocess(p.backbone, photo).astype(np.float32)
    shapes = octave_shapes(original.shape[:2], p.num_octave, p.octave_scale)
    ascent_step = make_ascent_step(features, p.layers, p.border, p.step_size, p.jit_compile)
    octaves: list[dict[str, Any]] = []
    started = time.perf_counter()

    def ascend(k: int, image: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        folder = ctx.out / f"octave-{k + 1}"
        variable = tf.Variable(image[None], dtype=tf.float32, name="image")

        def step(_):
            loss, moved = ascent_step(variable.value())
            # The book checks the loss before applying the step that would go past max_loss.
            if p.max_loss is None or float(loss) <= p.max_loss:
                variable.assign(moved)
            return {"loss": loss}

        def frame(i: int) -> None:
            (folder / FRAMES).mkdir(exist_ok=True)
            image = deprocess(p.backbone, variable.numpy()[0])
            save_png(folder / FRAMES / numbered_name("step", i + 1, 4), image)

        done = k * p.iterations
        result = optimize_resumable(
            ckpt_dir=folder,
            fingerprint=ctx.key,
            variables={"image": variable},
            step=step,
            iterations=p.iterations,
            checkpoint_every=p.checkpoint_every,
            should_stop=(lambda m: m["loss"] > p.max_loss) if p.max_loss is not None else None,
            snapshot_every=p.frame_every,
            snapshot=frame,
            progress=lambda d, _t, logs: ctx.progress(done + d, p.num_octave * p.iterations, logs),
            log=ctx.log,
            budget=ctx.budget,
            label="step",
        )
        losses = result["history"].get("loss", [])
        octaves.append(
            {
                "octave": k + 1,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "steps": result["iterations"],
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "stopped_early": result["stopped_early"],
                "loss": losses,
            }
        )
        ctx.log(
            f"octave {k + 1}/{len(shapes)} ({image.shape[1]}x{image.shape[0]}): "
            f"{result['iterations']} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
        )
        return variable.numpy()[0]

    def after_octave(k: int, image: np.ndarray) -> None:
        save_png(ctx.out / f"octave-{k + 1}.png", deprocess(p.backbone, image))

    dream = run_octaves(original, shapes, ascend, after_octave)
    save_png(ctx.out / DREAM, deprocess(p.backbone, dream))
    seconds = time.perf_counter() - started
    losses = [v for o in octaves for v in o["loss"]]
    summary = {
        **activation_points(p, features, original, photo, ctx.out / DREAM, len(losses)),
        "final_loss": losses[-1],
        "steps": len(losses),
        "seconds": round(seconds, 3),
        "traces": int(ascent_step.experimental_get_tracing_count()),
        **shape_summary([features], (1, *original.shape)),
    }
    write_json_atomic(
        ctx.out / HISTORY, {**summary, "octaves": octaves, "weights": weights, "layers": dict(p.layers)}
    )
    return {k: v for k, v in summary.items() if k != "seconds"}


def activation_points(
    p: DeepDreamParams, features, original: np.ndarray, photo: np.ndarray, dream_png: Path, steps: int
) -> dict[str, float]:
    """The chosen layers' activation (the dream loss, at full size) of the original photo, of the
    saved dream, and of plain gradient ascent on the full-size photo for as many steps with the
    same step size and the same max_loss stop (no octaves, no detail re-injection): what the
    budget reaches when nothing else is asked of the image. The quality record's three points."""
    from models.core.images import load_image
    from models.toolkit.backbones import preprocess

    ascent_step = _ascent_step(features, p.layers, p.border, p.step_size, p.jit_compile)

    def activation(image: np.ndarray) -> float:
        return float(ascent_step(image[None].astype(np.float32))[0])

    x = original[None].astype(np.float32)
    for _ in range(steps):
        loss, moved = ascent_step(x)
        if p.max_loss is not None and float(loss) > p.max_loss:
            break
        x = moved.numpy()
    return {
        "original_activation": activation(preprocess(p.backbone, photo)),
        "dream_activation": activation(preprocess(p.backbone, load_image(dream_png))),
        "plain_ascent_activation": activation(x[0]),
    }


def sample(p: DeepDreamParams, ctx: StepContext) -> dict[str, Any]:
    files = [DREAM, *(f"octave-{k + 1}.png" for k in range(p.num_octave))]
    for name in files:
        shutil.copyfile(ctx.upstream["train"] / name, ctx.out / name)
    return {"files": files}


def report(p: DeepDreamParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image

    history = json.loads((dirs["train"] / HISTORY).read_text())
    octaves = history["octaves"]
    photo = np.load(dirs["vectorize"] / IMAGE)
    dream = load_image(dirs["sample"] / DREAM)
    stages = [load_image(dirs["sample"] / f"octave-{o['octave']}.png") for o in octaves]
    frames, captions = [photo], ["original"]
    for o in octaves:
        folder = dirs["train"] / f"octave-{o['octave']}" / FRAMES
        for step, f in numbered_files(folder, "step"):
            frames.append(load_image(f))
            captions.append(f"octave {o['octave']}, step {step}")
    frames.append(dream)
    captions.append("dream")
    losses = [v for o in octaves for v in o["loss"]]
    octave_of = [o["octave"] for o in octaves for _ in o["loss"]]
    layers = ", ".join(f"{k} {v:g}" for k, v in history["layers"].items())
    quality = None
    if "dream_activation" in history:
        quality = Quality(
            metric="dream_activation",
            value=history["dream_activation"],
            untrained=history["original_activation"],
            reference=history["plain_ascent_activation"],
            floor=ACTIVATION_SCORE_FLOOR,
            label="activation of the chosen layers",
            untrained_is="the original photo",
            reference_is=f"plain gradient ascent at full size ({history['steps']} steps)",
        )
    return Report(
        title=f"DeepDream: {p.image} through {p.backbone}",
        quality=quality,
        main_image=DREAM,
        metrics={
            **{k: history[k] for k in ACTIVATIONS if k in history},
            "final_loss": history["final_loss"],
            "steps": history["steps"],
            "seconds": history["seconds"],
            **{f"loss_octave_{o['octave']}": o["last_loss"] for o in octaves},
        },
        sections=[
            Image("Dream", DREAM, dream),
            Grid(
                "Original, each octave (after re-injecting lost detail) and the dream",
                "octaves.png",
                [photo, *stages, dream],
                [
                    "original",
                    *(f"octave {o['octave']} ({o['width']}x{o['height']})" for o in octaves),
                    "dream",
                ],
            ),
            Animation("The dream forming, octave by octave", "dream.gif", frames, captions),
            Curve(
                "Loss per step (octaves one after another)",
                "loss.png",
                {"loss": losses},
                x="step",
                y="weighted mean squared activation",
            ),
            Table(
                "Loss per octave",
                [{k: v for k, v in o.items() if k != "loss"} for o in octaves],
            ),
            Note(_layers_note(p, layers, history["weights"])),
        ],
        history={"loss": losses, "octave": octave_of},
        weights=history["weights"],
    )


def _layers_note(p: DeepDreamParams, layers: str, weights: str) -> str:
    why = {
        "inception_v3": "the book's choice: mid-level mixed blocks, whose patterns (eyes, fur, "
        "arches) are what DeepDream is known for; lower layers give only edges, higher ones objects",
        "mobilenet_v2": "MobileNetV2's counterparts of Inception's mixed2..mixed5: block_5 (stride 8, "
        "textures) lightly, block_9 and block_12 (stride 16: eyes, fur, scales) most, block_14 "
        "(stride 32, object parts) moderately; block outputs rather than ReLU6 activations, which "
        "saturate and stop the gradient",
        "vgg19": "convolutions of VGG19 chosen by the user",
    }[p.backbone]
    return (
        f"Layers and coefficients: {layers} ({why}). Weights: {weights}. Step {p.step_size:g} on the "
        f"preprocessed image, {p.iterations} steps per octave, {p.num_octave} octaves of scale "
        f"{p.octave_scale:g}, max_loss {p.max_loss}, {p.border} border pixels left out of the loss."
    )


register(
    Technique(
        name="deepdream",
        summary="DeepDream: gradient ascent on a photo through an ImageNet convnet (Chollet 8.2)",
        params_model=DeepDreamParams,
        inputs={
            "image": Input(dataset=lambda p: p.image, source="image_source"),
            "weights": Input(lambda p: weights_entry(p.backbone), source="weights_source", optional=True),
        },
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("final_loss", "steps"),
        history_x="step",
        plots={"loss": ("loss",)},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {"iterations": 3, "checkpoint_every": 3, "frame_every": 3},
            updates=lambda p, inputs: p.num_octave * p.iterations,
            unit="ascent step",
        ),
        module=__name__,
    )
)
