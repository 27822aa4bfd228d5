"""Neural style transfer by optimisation (Gatys et al.; Chollet, Deep Learning with Python, 8.3).

Data: a content image resized to `height` (width by aspect ratio) and a style image resized to
the same size, as in the book. Loss (perceptual.py): content loss at one layer, Gram-matrix
style loss over several layers, total-variation loss, weighted. Optimisation: starting from the
content image, `iterations` outer iterations, each one L-BFGS-B run of at most
`evaluations_per_iteration` loss evaluations (SciPy, on the flattened image, float64), as the
book does; or Adam steps in a compiled loop. Each outer iteration is a checkpointed step, so a
killed run resumes.

Unlike the book, the content and style images go through the network once (their targets are
constants), not at every evaluation as a batch of three; and loss and gradient come from one
compiled function (SciPy's `jac=True`), not a stateful Evaluator class.
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

from models.core.files import numbered_files, numbered_name, write_json_atomic
from models.core.params import (
    TechniqueParams,
    max_pixels_param,
    param,
    source_param,
    weights_source_param,
)
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Check, Quality
from models.reporting.report import Animation, Curve, Grid, Image, Note, Report, Table
from models.techniques.style.perceptual import LossWeights, PerceptualLoss
from models.toolkit.backbones import weights_entry

BOOK_STYLE_LAYERS = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]
# MobileNetV2 stand-ins for the book's VGG19 layers (see the report's note): the first ReLU at
# each resolution for style (VGG's blockN_conv1: 1/1 ... 1/16; MobileNetV2's stem already halves
# the image, so 1/2 ... 1/16), and the deepest ReLU at 1/16 for content (VGG's block5_conv2).
MOBILENET_STYLE_LAYERS = [
    "stem_relu",
    "block_2_expand_relu",
    "block_4_expand_relu",
    "block_7_expand_relu",
    "block_14_expand_relu",
]
MOBILENET_CONTENT_LAYER = "block_13_expand_relu"
CONTENT, STYLE, RESULT, HISTORY, FRAMES = "content.npy", "style.npy", "result.png", "history.json", "frames"
KEPT = "content_kept.json"
STYLE_SCORE_FLOOR = 0.9  # the demo's floor: style loss at most 10% of the content photo's own
CONTENT_SSIM_FLOOR = 0.3  # ... with the photo still recognisable (luminance SSIM to it)


def style_quality(style_loss: float, content_style_loss: float, kept: float) -> Quality:
    """Style loss read from the content photo's own (untrained: where the optimisation starts) to
    0 (the style's Gram matrices matched exactly), with the photo kept recognisable."""
    return Quality(
        metric="style_loss",
        value=style_loss,
        untrained=content_style_loss,
        reference=0.0,
        floor=STYLE_SCORE_FLOOR,
        higher_is_better=False,
        label="style loss",
        untrained_is="the content photo itself",
        reference_is="the style matched exactly",
        checks=(
            Check("content_luminance_ssim", kept, CONTENT_SSIM_FLOOR, what="luminance SSIM to the content"),
        ),
    )


class StyleLossParams(TechniqueParams):
    """The style image, the loss network and the perceptual losses: what style_transfer and
    fast_style_transfer share (the book's values as defaults)."""

    style: str = param(
        "starry_night", "download", "Style image: a catalog entry (keras-io: The Starry Night)."
    )
    style_source: str = source_param("the style image")
    backbone: Literal["vgg19", "mobilenet_v2"] = param(
        "vgg19", "download", "Loss network (Chollet 8.3: VGG19); its ImageNet weights are an input."
    )
    weights_source: str = weights_source_param("the loss network's ImageNet weights")
    max_pixels: int = max_pixels_param(ge=4)
    content_layer: str = param("block5_conv2", "train", "Content layer (Chollet 8.3: block5_conv2).")
    style_layers: list[str] = param(
        BOOK_STYLE_LAYERS, "train", "Style layers (Chollet 8.3: block1_conv1 ... block5_conv1)."
    )
    content_weight: float = param(0.025, "train", "Content loss weight (Chollet 8.3: 0.025).", ge=0)
    style_weight: float = param(
        1.0, "train", "Style loss weight, shared by the style layers (Chollet 8.3: 1.0).", ge=0
    )
    tv_weight: float = param(1e-4, "train", "Total-variation loss weight (Chollet 8.3: 1e-4).", ge=0)

    @model_validator(mode="after")
    def _layers_exist(self):
        from models.toolkit.backbones import check_layers

        if not self.style_layers:
            raise ValueError("style_layers needs at least one layer")
        check_layers(self.backbone, [self.content_layer, *self.style_layers])
        return self


# The demo's loss network: a bundled colourful texture as the style, the offline ImageNet
# MobileNetV2 and its layers. The book's weights assume VGG19's features and its input units; on
# MobileNetV2 (inputs about 50x smaller, ReLU6 features) these balance the terms: style dominates
# at the start.
STYLE_LOSS_DEMO = {
    "style": "starry_night",  # offline: gdl's procedural stand-in (the catalog says which)
    "style_source": "offline",
    "backbone": "mobilenet_v2",
    "weights_source": "offline",
    "content_layer": MOBILENET_CONTENT_LAYER,
    "style_layers": MOBILENET_STYLE_LAYERS,
    "content_weight": 0.01,
    "style_weight": 1e4,
    "tv_weight": 1e-3,
}


class StyleTransferParams(StyleLossParams):
    content: str = param("paris", "download", "Content image: a catalog entry (Chollet 8.3: your own photo).")
    content_source: str = source_param("the content image")
    height: int = param(400, "vectorize", "Height the images are resized to (Chollet 8.3: 400).", ge=8)
    optimizer: Literal["lbfgs", "adam"] = param(
        "lbfgs", "train", "lbfgs: SciPy L-BFGS-B on the flattened image (Chollet 8.3); adam: compiled Adam."
    )
    iterations: int = param(20, "train", "Outer iterations, each checkpointed (Chollet 8.3: 20).", ge=1)
    evaluations_per_iteration: int = param(
        20,
        "train",
        "Per outer iteration: loss evaluations of one L-BFGS run (Chollet 8.3: maxfun=20), or Adam steps.",
        ge=1,
    )
    adam_learning_rate: float = param(
        2.0, "train", "Adam step size in 8-bit grey levels of the image (adam only).", gt=0
    )
    checkpoint_every: int = param(1, "train", "Outer iterations between checkpoints.", ge=1)
    frame_every: int = param(1, "train", "Outer iterations between saved frames (Chollet 8.3: 1).", ge=1)
    target_loss: float | None = param(
        None,
        "train",
        "Report the time to reach this total loss (null: 1.1 x the final loss).",
        gt=0,
    )


DEMO = {
    # Offline and CPU-sized (about a minute of optimisation on 2 busy cores): a bundled photo and
    # the loss network of STYLE_LOSS_DEMO, 176 px high (265 px on the long side).
    **STYLE_LOSS_DEMO,
    "content": "chelsea",
    "content_source": "offline",
    "height": 176,
    "iterations": 6,
}

TINY = {
    "height": 32,
    "iterations": 3,
    "evaluations_per_iteration": 4,
    "frame_every": 1,
    "checkpoint_every": 2,
}


def loss_weights(p: Any) -> LossWeights:
    return LossWeights(p.content_weight, p.style_weight, p.tv_weight)


# ---------------------------------------------------------------------------------------------
# Data


def load_pair(
    content_path: Path, style_path: Path, height: int, max_pixels: int, names: tuple[str, str] = ("", "")
) -> tuple[np.ndarray, np.ndarray]:
    """The content image at `height` (width by aspect ratio) and the style image resized to the
    same size (the book's `target_size`), both uint8 RGB. `names`: how errors name the two
    (default: their file names)."""
    from models.core.images import load_image, resize

    content = load_image(
        content_path, max_pixels=max_pixels, origin=f"content image {names[0] or content_path.name}"
    )
    style = load_image(style_path, max_pixels=max_pixels, origin=f"style image {names[1] or style_path.name}")
    content = resize(content, height=height)
    return content, resize(style, size=content.shape[:2])


def vectorize(p: StyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    from models.inputs.catalog import named_source

    names = (named_source(p.content, p.content_source), named_source(p.style, p.style_source))
    content, style = load_pair(ctx.inputs["content"], ctx.inputs["style"], p.height, p.max_pixels, names)
    np.save(ctx.out / CONTENT, content, allow_pickle=False)
    np.save(ctx.out / STYLE, style, allow_pickle=False)
    return {"height": int(content.shape[0]), "width": int(content.shape[1])}


# ---------------------------------------------------------------------------------------------
# The objective and the two optimisers


def build_loss(
    backbone: str,
    weights_path: Path | None,
    content_layer: str,
    style_layers: Sequence[str],
    weights: LossWeights,
    style_rgb: np.ndarray,
) -> tuple[PerceptualLoss, str]:
    """The perceptual loss on `backbone` with its weights, and the weights in words."""
    from models.toolkit.backbones import feature_model, load_backbone, preprocess

    model, described = load_backbone(backbone, weights_path, include_top=False)
    model.trainable = False
    features = feature_model(model, list(dict.fromkeys([content_layer, *style_layers])))
    return PerceptualLoss(
        features, content_layer, style_layers, weights, preprocess(backbone, style_rgb)
    ), described


class Objective:
    """The loss of one combination image of a fixed shape, for SciPy and for Adam.

    `loss_and_grad(flat)` is ONE compiled function returning the total loss and its gradient
    with respect to the flattened image, in float64 (SciPy's L-BFGS-B works in float64), and the
    separate loss terms. `loss_only` and `grad_only` are the same computation split in two calls
    (what the benchmark compares against).
    """

    def __init__(self, loss: PerceptualLoss, content_pre: np.ndarray, jit_compile: bool = False):
        import tensorflow as tf

        self.loss = loss
        self.shape = (1, *content_pre.shape)
        self.size = int(np.prod(self.shape))
        self.content_target = tf.constant(loss.content_features(tf.constant(content_pre[None], tf.float32)))
        flat_spec = [tf.TensorSpec([self.size], tf.float64)]

        def parts_of(flat):
            return loss(tf.reshape(tf.cast(flat, tf.float32), self.shape), self.content_target)

        def loss_and_grad(flat):
            with tf.GradientTape() as tape:
                tape.watch(flat)
                parts = parts_of(flat)
            grad = tape.gradient(parts["total"], flat)
            return tf.cast(parts["total"], tf.float64), grad, parts

        def loss_only(flat):
            return tf.cast(parts_of(flat)["total"], tf.float64)

        def grad_only(flat):
            return loss_and_grad(flat)[1]

        self.loss_and_grad = tf.function(loss_and_grad, input_signature=flat_spec, jit_compile=jit_compile)
        self.loss_only = tf.function(loss_only, input_signature=flat_spec, jit_compile=jit_compile)
        self.grad_only = tf.function(grad_only, input_signature=flat_spec, jit_compile=jit_compile)
        self.evaluations = 0

    def scipy_fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(loss, gradient) for `scipy.optimize.minimize(..., jac=True)`."""
        self.evaluations += 1
        total, grad, _ = self.loss_and_grad(x)
        return float(total), grad.numpy()

    def parts(self, x: np.ndarray) -> dict[str, float]:
        _, _, parts = self.loss_and_grad(np.asarray(x, np.float64).ravel())
        return {k: float(v) for k, v in parts.items()}


def lbfgs_run(fun: Callable, x0: np.ndarray, max_evaluations: int) -> Any:
    """One L-BFGS-B run of at most `max_evaluations` loss evaluations (the book's maxfun).

    SciPy checks the budget between iterations, so a line search can end a few evaluations over
    it, as in the book's `fmin_l_bfgs_b(maxfun=20)`. The gradient tolerance is off: whether a
    gradient counts as small depends on the loss's scale (backbone, weights, image size), and the
    budget is what the book's iterations are made of."""
    from scipy.optimize import minimize

    return minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxfun": max_evaluations, "maxiter": 10**6, "gtol": 0.0},
    )


def make_step(
    objective: Objective,
    image,
    optimizer_name: str,
    evaluations: int,
    optimizer: Any = None,
    jit_compile: bool = False,
) -> Callable[[int], dict[str, float]]:
    """step(i): one outer iteration on the keras Variable `image` (1, H, W, 3), returning the
    loss terms of the image it leaves and its seconds."""
    import tensorflow as tf

    if optimizer_name == "lbfgs":

        def lbfgs_step(_i) -> dict[str, float]:
            t0 = time.perf_counter()
            before = objective.evaluations
            result = lbfgs_run(objective.scipy_fun, image.numpy().astype(np.float64).ravel(), evaluations)
            image.assign(result.x.reshape(objective.shape).astype(np.float32))
            seconds = time.perf_counter() - t0
            parts = objective.parts(result.x)  # the loss at the returned image (not timed)
            return {**parts, "evaluations": objective.evaluations - before, "seconds": seconds}

        return lbfgs_step

    loss, target = objective.loss, objective.content_target

    @tf.function(jit_compile=jit_compile)
    def adam_steps():
        for _ in tf.range(evaluations):
            with tf.GradientTape() as tape:
                total = loss(image, target)["total"]
            optimizer.apply_gradients([(tape.gradient(total, image), image)])
        return loss(image, target)

    def adam_step(_i) -> dict[str, float]:
        t0 = time.perf_counter()
        parts = {k: float(v) for k, v in adam_steps().items()}
        return {**parts, "evaluations": evaluations, "seconds": time.perf_counter() - t0}

    return adam_step


def adam_optimizer(backbone: str, grey_levels: float):
    """Adam whose step is `grey_levels` 8-bit levels of the image, in the backbone's input units."""
    import keras

    from models.toolkit.backbones import input_step

    return keras.optimizers.Adam(learning_rate=float(grey_levels * np.mean(input_step(backbone))))


def time_to_loss(totals: Sequence[float], seconds: Sequence[float], target: float) -> float | None:
    """Cumulative seconds when the total loss first reached `target` (None: never)."""
    elapsed = np.cumsum(seconds)
    for total, t in zip(totals, elapsed, strict=True):
        if total <= target:
            return float(t)
    return None


# ---------------------------------------------------------------------------------------------
# Steps


def train(p: StyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    import keras

    from models.core.images import save_png
    from models.toolkit.backbones import deprocess, preprocess
    from models.toolkit.training import configure_runtime, optimize_resumable, shape_summary

    device = configure_runtime(
        p.device,
        p.mixed_precision,
        ctx.log,
        float32_only="the image and its loss stay in float32 (L-BFGS needs float64)",
    )
    content = np.load(ctx.upstream["vectorize"] / CONTENT)
    style = np.load(ctx.upstream["vectorize"] / STYLE)
    keras.utils.set_random_seed(p.seed)  # weights_source=none: the same random backbone on resume
    # Loaded before anything is written: weights that do not fit leave the slot empty.
    loss, described = build_loss(
        p.backbone, ctx.inputs.get("weights"), p.content_layer, p.style_layers, loss_weights(p), style
    )
    objective = Objective(loss, preprocess(p.backbone, content), p.jit_compile)
    image = keras.Variable(
        preprocess(p.backbone, content)[None], name="image"
    )  # the book starts from the content
    optimizer = adam_optimizer(p.backbone, p.adam_learning_rate) if p.optimizer == "adam" else None
    step = make_step(objective, image, p.optimizer, p.evaluations_per_iteration, optimizer, p.jit_compile)

    frames = ctx.out / FRAMES

    def snapshot(i: int) -> None:
        frames.mkdir(exist_ok=True)
        save_png(frames / numbered_name("frame", i + 1, 4), deprocess(p.backbone, image.numpy()[0]))

    result = optimize_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        variables={"image": image},
        optimizer=optimizer,
        step=step,
        iterations=p.iterations,
        checkpoint_every=p.checkpoint_every,
        snapshot_every=p.frame_every,
        snapshot=snapshot,
        progress=ctx.progress,
        log=ctx.log,
        budget=ctx.budget,
    )
    history = result["history"]
    save_png(ctx.out / RESULT, deprocess(p.backbone, image.numpy()[0]))
    target = p.target_loss or 1.1 * history["total"][-1]
    final = {
        "total_loss": history["total"][-1],
        "content_loss": history["content"][-1],
        "style_loss": history["style"][-1],
        "tv_loss": history["tv"][-1],
        # The content image's own losses (where the optimisation starts): its style loss is the
        # quality record's untrained point.
        **{f"initial_{k}_loss": v for k, v in objective.parts(preprocess(p.backbone, content)).items()},
        "iterations": result["iterations"],
        "evaluations": int(sum(history["evaluations"])),
        **shape_summary([loss.features], image.shape),
        "optimisation_seconds": float(sum(history["seconds"])),
        "target_loss": target,
        "seconds_to_target_loss": time_to_loss(history["total"], history["seconds"], target),
        "resumed_from_iteration": result["resumed_from"],
        "device": device,
    }
    write_json_atomic(ctx.out / HISTORY, {"final": final, "history": history, "weights": described})
    return {k: v for k, v in final.items() if v is not None}


def sample(p: StyleTransferParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import load_image, save_generated
    from models.toolkit.quality import luminance_ssim

    shutil.copyfile(ctx.upstream["train"] / RESULT, ctx.out / RESULT)
    result = load_image(ctx.out / RESULT)
    save_generated(ctx.out, result[None])
    kept = luminance_ssim(result, np.load(ctx.upstream["vectorize"] / CONTENT))
    write_json_atomic(ctx.out / KEPT, {"content_luminance_ssim": kept})
    return {"files": [RESULT], "content_luminance_ssim": kept}


def report(p: StyleTransferParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image

    saved = json.loads((dirs["train"] / HISTORY).read_text())
    final, history = saved["final"], saved["history"]
    content = np.load(dirs["vectorize"] / CONTENT)
    style = np.load(dirs["vectorize"] / STYLE)
    result = load_image(dirs["sample"] / RESULT)
    frame_files = numbered_files(dirs["train"] / FRAMES, "frame")
    frames = [content, *(load_image(f) for _, f in frame_files)]
    captions = ["start (content)", *(f"iteration {i}" for i, _ in frame_files)]
    w = loss_weights(p)
    weighted = {
        "content x weight": [w.content * v for v in history["content"]],
        "style x weight": [w.style * v for v in history["style"]],
        "tv x weight": [w.total_variation * v for v in history["tv"]],
        "total": history["total"],
    }
    reached = final.get("seconds_to_target_loss")
    metrics = {k: v for k, v in final.items() if v is not None}
    kept = json.loads((dirs["sample"] / KEPT).read_text())["content_luminance_ssim"]
    metrics["content_luminance_ssim"] = kept
    return Report(
        title=f"style_transfer: neural style transfer by optimisation ({p.optimizer}, {p.backbone})",
        quality=style_quality(final["style_loss"], final["initial_style_loss"], kept),
        main_image=RESULT,
        metrics=metrics,
        sections=[
            Grid(
                "Content, style and result",
                "content_style_result.png",
                [content, style, result],
                ["content", "style", f"result ({final['iterations']} iterations)"],
                cols=3,
            ),
            Image("Result", RESULT, result),
            Animation("The image after each saved iteration", "frames.gif", frames, captions),
            Curve(
                "Loss terms per outer iteration (as they enter the total)",
                "losses.png",
                weighted,
                x="iteration",
                y="weighted loss",
                log_y=True,
            ),
            Table(
                "Losses per outer iteration",
                [
                    {
                        "iteration": i + 1,
                        **{
                            k: history[k][i]
                            for k in ("total", "content", "style", "tv", "evaluations", "seconds")
                        },
                    }
                    for i in range(len(history["total"]))
                ],
            ),
            Note(
                f"Backbone {p.backbone}; content layer {p.content_layer}; style layers "
                f"{', '.join(p.style_layers)}; weights content {p.content_weight}, style {p.style_weight} "
                f"(shared by {len(p.style_layers)} layers), total variation {p.tv_weight}. "
                + (
                    "The MobileNetV2 layers stand in for the book's VGG19 ones: the first ReLU at each "
                    "resolution from 1/2 to 1/16 for style (VGG's blockN_conv1), the deepest ReLU at "
                    "1/16 for content (VGG's block5_conv2). "
                    if p.backbone == "mobilenet_v2"
                    else ""
                )
                + f"Optimiser {p.optimizer}: {final['iterations']} outer iterations, "
                f"{final['evaluations']} loss evaluations, {final['optimisation_seconds']:.1f} s. "
                f"Total loss {final['initial_total_loss']:.4g} -> {final['total_loss']:.4g}; "
                + (
                    f"reached {final['target_loss']:.4g} after {reached:.1f} s."
                    if reached is not None
                    else f"never reached {final['target_loss']:.4g}."
                )
            ),
        ],
        history={k: history[k] for k in ("total", "content", "style", "tv", "seconds")},
        weights=saved["weights"],
    )


register(
    Technique(
        name="style_transfer",
        summary="neural style transfer by optimisation, L-BFGS or Adam (Chollet 8.3)",
        params_model=StyleTransferParams,
        inputs={
            "content": Input(lambda p: p.content, source="content_source"),
            "style": Input(lambda p: p.style, source="style_source"),
            "weights": Input(lambda p: weights_entry(p.backbone), source="weights_source", optional=True),
        },
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("total_loss", "style_loss", "content_loss", "seconds_to_target_loss"),
        history_x="iteration",
        plots={"losses": ("total", "content", "style", "tv")},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {"iterations": 2, "evaluations_per_iteration": 3, "checkpoint_every": 2, "frame_every": 2},
            updates=lambda p, inputs: p.iterations * p.evaluations_per_iteration,
            unit="loss evaluation",
        ),
        module=__name__,
    )
)
