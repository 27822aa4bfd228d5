"""adversarial: small input perturbations that fool an ImageNet classifier (Cookbook 8).

Targeted attack (the book's): gradient ascent on the photo itself to raise the probability of
one class (386, African elephant), each step clipped back into an L-infinity ball of radius
`epsilon` around the original in the network's input space, until p(target) >= `threshold`.
The book's literal step is `image += gradient * 0.1` with the raw (unnormalised) gradient of
p(target); when p(target) starts tiny that gradient vanishes (measured on chelsea with the
offline MobileNetV2: p = 1.9e-11 and no movement in 40 steps), so `gradient: sign` offers the
normalised step of the iterative FGSM (Kurakin et al. 2016): every pixel moves `step_size` in
the direction of sign(grad log p(target)), the same per-pixel direction as the book's gradient.
Each step is one compiled function run by `optimize_resumable`, so a killed run resumes.

epsilon is stated in the network's input space, as the book does (0.01 in InceptionV3's
[-1, 1] space = 1.275 of 255 grey levels); `backbones.input_step` turns it into grey levels
for the report. MobileNetV2's torchvision normalisation divides by std ~0.226, so 1.275 grey
levels there is ~0.0225 (the demo's value). The attack also keeps the image displayable
(inside the input-space image of 0..255).

The saved PNG: the book's attack lives in float space, a PNG has whole grey levels. The PNG is
the attacked image rounded to grey levels and then projected into the 8-bit ball of
k = floor(epsilon / grey level) levels per channel around the (8-bit) original. Guaranteed:
|PNG - original| <= k grey levels, hence <= epsilon in input space (to within 0.1% of a grey
level, the tolerance of the floor). Not guaranteed: that the PNG still fools the network (with
epsilon under one grey level the PNG *is* the original); its p(target) is a metric. With
`png_steps`, the attack goes on on the 8-bit image itself (one grey level per pixel per step,
inside the same ball), so what is saved is what was attacked.

Untargeted sweep: FGSM (one step of epsilon along the sign of the loss gradient, Goodfellow et
al. 2015) and PGD (Madry et al. 2018: `pgd_steps` steps of `pgd_step_ratio * epsilon`,
projected) on a folder of photos, for each epsilon: the share of photos whose top-1 class
changed from the clean prediction. PGD starts from the FGSM point and keeps the first iterate
that fools the network, so per photo PGD succeeds wherever FGSM does.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from models.core.errors import GdlError
from models.core.files import write_json_atomic
from models.core.params import (
    TechniqueParams,
    max_pixels_param,
    param,
    source_param,
    weights_source_param,
)
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.inputs.formats import image_files
from models.reporting.quality import Check, Quality
from models.reporting.report import Curve, Grid, Note, Report, Table
from models.toolkit.attacks import sweep
from models.toolkit.backbones import pixel_bounds, weights_entry

PHOTO, PHOTOS, META = "photo.npy", "photos.npy", "meta.json"
ATTACKED, PNG, RESULT = "attacked.npy", "adversarial.png", "attack.json"
SWEEP = "sweep.json"
CLASSES = 1000  # ImageNet
PNG_TARGET_FLOOR = 0.8  # the demo's floor on p(target) of the saved 8-bit PNG
MAX_LEVELS = 4  # ... changing no pixel by more than this many grey levels
LEVEL_TOLERANCE = 1e-3  # of a grey level, so epsilon = exactly k levels allows k levels
DIFF_GAIN = 50  # the difference image is amplified this many times around grey


class AdversarialParams(TechniqueParams):
    photo_source: str = source_param(
        "the photo to attack", remote="catalog: chelsea; Cookbook 8 attacks a cat photo"
    )
    photos_source: str = source_param(
        "the photos for the FGSM/PGD sweep",
        "offline",
        remote=None,
        offline="catalog: photos; no remote: the book uses the reader's own",
    )
    backbone: Literal["inception_v3", "mobilenet_v2"] = param(
        "inception_v3", "download", "ImageNet classifier to fool (Cookbook 8: InceptionV3 with its top)."
    )
    weights_source: str = weights_source_param("the classifier's weights (with top)", optional=False)
    max_pixels: int = max_pixels_param(what="photos")
    image_size: int | None = param(
        None,
        "vectorize",
        "Side of the square centre crop fed to the network (null: the backbone's, 299 or 224).",
        ge=32,
    )
    target_class: int = param(
        386,
        "train",
        "ImageNet class the targeted attack aims for (Cookbook 8: 386, African elephant).",
        ge=0,
        le=CLASSES - 1,
    )
    epsilon: float = param(
        0.01,
        "train",
        "L-infinity bound of the targeted attack in the network's input space "
        "(Cookbook 8: 0.01 in InceptionV3's [-1, 1] space, 1.275 grey levels).",
        ge=0,
    )
    gradient: Literal["raw", "sign"] = param(
        "raw",
        "train",
        "raw: image += step_size * grad p(target), the book's unnormalised step; "
        "sign: image += step_size * sign(grad log p(target)) (iterative FGSM).",
    )
    step_size: float = param(0.1, "train", "Step multiplier (Cookbook 8: image += gradient * 0.1).", gt=0)
    threshold: float = param(0.8, "train", "Stop once p(target) reaches this (Cookbook 8: 0.8).", gt=0, le=1)
    max_steps: int = param(
        500, "train", "Give up after this many steps (the book loops until the threshold).", ge=1
    )
    checkpoint_every: int = param(10, "train", "Steps between checkpoints of the attacked image.", ge=1)
    png_steps: int = param(
        0,
        "train",
        "Quantisation-aware steps after the attack: on the 8-bit image itself, each pixel moves one "
        "grey level along sign(grad log p(target)), kept within the epsilon ball of whole levels, "
        "until the saved PNG reaches png_target (0: the book, which saves the float image only).",
        ge=0,
    )
    png_target: float = param(
        0.9,
        "train",
        "p(target) the quantisation-aware steps aim for: above the threshold, so the saved file keeps "
        "a margin over it on other machines' floats.",
        gt=0,
        le=1,
    )
    sweep_epsilons: list[float] = param(
        [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01],
        "sample",
        "Epsilons (input space, each >= 0, distinct) of the untargeted FGSM/PGD sweep.",
    )
    pgd_steps: int = param(
        10, "sample", "PGD iterations after the FGSM start (Madry et al. 2018 use 7 to 100).", ge=1
    )
    pgd_step_ratio: float = param(
        0.25, "sample", "PGD step as a fraction of epsilon (a common rule: 2.5 / steps).", gt=0
    )

    @field_validator("sweep_epsilons")
    @classmethod
    def _epsilons(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("give at least one epsilon")
        if any(not math.isfinite(v) or v < 0 for v in values) or len(set(values)) != len(values):
            raise ValueError("epsilons must be finite, >= 0 and distinct")
        return sorted(values)

    @field_validator("mixed_precision")
    @classmethod
    def _float32(cls, value: bool) -> bool:
        if value:
            raise ValueError("attacks compare probabilities near 0 and 1 in float32; set it false")
        return value


DEMO = {
    "photo_source": "offline",
    "backbone": "mobilenet_v2",
    "weights_source": "offline",
    "epsilon": 0.0225,  # the book's 1.275 grey levels in MobileNetV2's normalised space: 1 level
    "gradient": "sign",
    "step_size": 0.005,
    "max_steps": 60,
    "png_steps": 30,
    "checkpoint_every": 5,
    "sweep_epsilons": [0.0, 0.0002, 0.0005, 0.001, 0.005],  # 0 to 0.3 grey levels: enough here
    "pgd_steps": 3,
    "pgd_step_ratio": 0.5,
}
TINY = {
    "image_size": 64,
    "max_steps": 3,
    "checkpoint_every": 2,
    "sweep_epsilons": [0.0, 0.05],
    "pgd_steps": 1,
}


# ---------------------------------------------------------------------------------------------
# Data


def input_size(p: AdversarialParams) -> int:
    from models.toolkit.backbones import default_input_size

    return p.image_size or default_input_size(p.backbone)


def vectorize(p: AdversarialParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import load_image
    from models.toolkit.backbones import eval_crop

    size = input_size(p)
    photo = eval_crop(load_image(ctx.inputs["photo"], max_pixels=p.max_pixels), size)
    files = image_files(ctx.inputs["photos"])
    if not files:
        raise GdlError(f"photos folder {ctx.inputs['photos']} holds no images")
    photos = [eval_crop(load_image(f, max_pixels=p.max_pixels), size) for f in files]
    np.save(ctx.out / PHOTO, photo, allow_pickle=False)
    np.save(ctx.out / PHOTOS, np.stack(photos), allow_pickle=False)
    write_json_atomic(ctx.out / META, {"photos": [f.name for f in files], "size": size})
    return {"size": size, "photos": len(photos)}


# ---------------------------------------------------------------------------------------------
# The classifier and its input space


def load_classifier(p: AdversarialParams, weights: Path, size: int):
    """The backbone with its ImageNet classifier, and the weights in words."""
    from models.toolkit.backbones import load_backbone

    model, described = load_backbone(p.backbone, weights, include_top=True, input_shape=(size, size, 3))
    classes = model.output_shape[-1]
    if classes != CLASSES:
        raise GdlError(
            f"weights {Path(weights).name}: the classifier has {classes} classes, not ImageNet's {CLASSES}"
        )
    return model, described


def to_levels(backbone: str, x: np.ndarray) -> np.ndarray:
    """Input space -> grey levels as floats (no rounding): the inverse of the affine preprocess."""
    from models.toolkit.backbones import input_step

    low, _ = pixel_bounds(backbone)
    return (np.asarray(x, np.float64) - low) / input_step(backbone)


def allowed_levels(backbone: str, epsilon: float) -> np.ndarray:
    """k per channel: the whole grey levels an 8-bit image may move and stay within epsilon."""
    from models.toolkit.backbones import input_step

    return np.floor(epsilon / input_step(backbone).astype(np.float64) + LEVEL_TOLERANCE).astype(np.int64)


def quantize(backbone: str, attacked: np.ndarray, original: np.ndarray, epsilon: float) -> np.ndarray:
    """The attacked image (input space) as 8-bit RGB, rounded and projected back into the ball
    of `allowed_levels` grey levels around the 8-bit `original`: within epsilon by construction."""
    k = allowed_levels(backbone, epsilon)
    levels = np.round(to_levels(backbone, attacked))
    base = original.astype(np.int64)
    return np.clip(np.clip(levels, base - k, base + k), 0, 255).astype(np.uint8)


def top5(probs: np.ndarray) -> list[dict[str, float]]:
    order = np.argsort(probs)[::-1][:5]
    return [{"class": int(c), "p": float(probs[c])} for c in order]


# ---------------------------------------------------------------------------------------------
# Targeted attack


def targeted_step(model, image, original, p: AdversarialParams, jit_compile: bool):
    """One compiled attack step on the variable `image`: gradient of p(target), the step, the
    projection into the epsilon ball and the displayable range. An image that already reached the
    threshold is left as it is, so the run stops on the image whose p(target) it reports."""
    import tensorflow as tf

    low, high = (tf.constant(b.reshape(1, 1, 1, 3), tf.float32) for b in pixel_bounds(p.backbone))
    x0 = tf.constant(original, tf.float32)
    lower, upper = tf.maximum(x0 - p.epsilon, low), tf.minimum(x0 + p.epsilon, high)

    @tf.function(jit_compile=jit_compile)
    def step(iteration):  # the iteration number is unused: every step is the same
        with tf.GradientTape() as tape:
            probs = model(image, training=False)
            p_target = probs[0, p.target_class]
            # log p has the same gradient direction as p, without underflow when p is ~1e-11.
            objective = p_target if p.gradient == "raw" else tf.math.log(p_target + 1e-30)
        grad = tape.gradient(objective, image)
        move = p.step_size * (grad if p.gradient == "raw" else tf.sign(grad))
        moved = tf.clip_by_value(image + move, lower, upper)
        image.assign(tf.where(p_target >= p.threshold, image, moved))
        top = tf.argmax(probs[0])
        return {"p_target": p_target, "top1": tf.cast(top, tf.float32), "p_top1": probs[0, top]}

    return step


def train(p: AdversarialParams, ctx: StepContext) -> dict[str, Any]:
    import keras

    from models.core.images import save_png
    from models.toolkit.backbones import preprocess
    from models.toolkit.training import configure_runtime, optimize_resumable, shape_summary

    configure_runtime(p.device, False, ctx.log)
    photo = np.load(ctx.upstream["vectorize"] / PHOTO)
    model, weights = load_classifier(p, ctx.inputs["weights"], photo.shape[0])
    original = preprocess(p.backbone, photo)[None]
    clean = np.asarray(model(original, training=False))[0]
    image = keras.Variable(original, name="image")
    result = optimize_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        variables={"image": image},
        step=targeted_step(model, image, original, p, p.jit_compile),
        iterations=p.max_steps,
        checkpoint_every=p.checkpoint_every,
        should_stop=lambda m: m["p_target"] >= p.threshold,
        progress=ctx.progress,
        log=ctx.log,
        budget=ctx.budget,
        label="step",
    )
    attacked = image.numpy()
    final = np.asarray(model(attacked, training=False))[0]
    png = quantize(p.backbone, attacked[0], photo, p.epsilon)
    png_steps = 0
    if p.png_steps:
        png, png_steps = refine_png(model, p, png, photo)
    png_probs = np.asarray(model(preprocess(p.backbone, png)[None], training=False))[0]
    history = result["history"]
    # Steps that moved the image: the last iteration of a successful run only checked it.
    steps = sum(1 for v in history.get("p_target", []) if v < p.threshold)
    np.save(ctx.out / ATTACKED, attacked[0], allow_pickle=False)
    save_png(ctx.out / PNG, png)
    summary = {
        "weights": weights,
        "steps": steps,
        "success": bool(final[p.target_class] >= p.threshold),
        "p_target_clean": float(clean[p.target_class]),
        "p_target": float(final[p.target_class]),
        "png_p_target": float(png_probs[p.target_class]),
        "png_success": bool(png_probs[p.target_class] >= p.threshold),
        "png_top1": int(np.argmax(png_probs)),
        "png_steps": png_steps,
        "max_change": float(np.abs(attacked[0] - original[0]).max()),
        "png_max_levels": int(np.abs(png.astype(np.int64) - photo.astype(np.int64)).max()),
        "allowed_levels": allowed_levels(p.backbone, p.epsilon).tolist(),
        "top5_clean": top5(clean),
        "top5_attacked": top5(final),
        "top5_png": top5(png_probs),
        "history": history,
        "resumed_from": result["resumed_from"],
        **shape_summary([model], original.shape),
    }
    write_json_atomic(ctx.out / RESULT, summary)
    ctx.log(
        f"p(target {p.target_class}): {summary['p_target_clean']:.3g} -> {summary['p_target']:.3g} "
        f"in {steps} steps; saved PNG {summary['png_p_target']:.3g}"
    )
    return {
        k: summary[k] for k in ("steps", "success", "p_target", "png_p_target", "parameters", "input_shape")
    }


def refine_png(model, p: AdversarialParams, png: np.ndarray, photo: np.ndarray) -> tuple[np.ndarray, int]:
    """Quantisation-aware steps on the 8-bit image: one grey level per pixel along sign(grad log
    p(target)) at the image as it will be saved, projected into the ball of `allowed_levels`
    around the 8-bit original and 0..255, until p(target) of the 8-bit image reaches
    `png_target`. Returns the image and the steps taken."""
    import tensorflow as tf

    from models.toolkit.backbones import preprocess

    k = allowed_levels(p.backbone, p.epsilon)
    base = photo.astype(np.int64)
    low, high = np.maximum(base - k, 0), np.minimum(base + k, 255)
    current = png.astype(np.int64)
    for step in range(p.png_steps):
        x = tf.constant(preprocess(p.backbone, current.astype(np.uint8))[None])
        with tf.GradientTape() as tape:
            tape.watch(x)
            p_target = model(x, training=False)[0, p.target_class]
            objective = tf.math.log(p_target + 1e-30)
        if float(p_target) >= p.png_target:
            return current.astype(np.uint8), step
        grad = tape.gradient(objective, x).numpy()[0]
        current = np.clip(current + np.sign(grad).astype(np.int64), low, high)
    return current.astype(np.uint8), p.png_steps


def sample(p: AdversarialParams, ctx: StepContext) -> dict[str, Any]:
    photos = np.load(ctx.upstream["vectorize"] / PHOTOS)
    model, _ = load_classifier(p, ctx.inputs["weights"], photos.shape[1])
    labels, rows = sweep(
        model, p.backbone, photos, p.sweep_epsilons, p.pgd_steps, p.pgd_step_ratio, p.jit_compile
    )
    write_json_atomic(ctx.out / SWEEP, {"clean_top1": labels, "rows": rows})
    shutil.copyfile(ctx.upstream["train"] / PNG, ctx.out / PNG)
    return {"files": [PNG, SWEEP], "pgd_success": [r["pgd_success"] for r in rows]}


# ---------------------------------------------------------------------------------------------
# Report


def eps_key(eps: float) -> str:
    return f"{eps:g}".replace(".", "p").replace("-", "m")


def levels_text(backbone: str, eps: float) -> str:
    from models.toolkit.backbones import input_step

    levels = eps / input_step(backbone)
    lo, hi = float(levels.min()), float(levels.max())
    return f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.3g}-{hi:.3g}"


def difference(photo: np.ndarray, other: np.ndarray, gain: int) -> np.ndarray:
    """(other - photo) in grey levels, amplified around mid-grey."""
    diff = other.astype(np.float64) - photo.astype(np.float64)
    return np.clip(np.round(128 + gain * diff), 0, 255).astype(np.uint8)


def report(p: AdversarialParams, dirs: dict[str, Path]) -> Report:
    from models.core.images import load_image
    from models.toolkit.backbones import deprocess

    a = json.loads((dirs["train"] / RESULT).read_text())
    sw = json.loads((dirs["sample"] / SWEEP).read_text())
    names = json.loads((dirs["vectorize"] / META).read_text())["photos"]
    photo = np.load(dirs["vectorize"] / PHOTO)
    attacked = deprocess(p.backbone, np.load(dirs["train"] / ATTACKED))
    png = load_image(dirs["sample"] / PNG)
    history = a["history"]
    metrics: dict[str, Any] = {
        "target_probability": a["p_target"],
        "attack_success": int(a["success"]),
        "attack_steps": a["steps"],
        "png_target_probability": a["png_p_target"],
        "png_attack_success": int(a["png_success"]),
        "png_top1": a["png_top1"],
        "png_steps": a.get("png_steps", 0),
        "clean_target_probability": a["p_target_clean"],
        "max_change_input_space": a["max_change"],
        "png_max_change_levels": a["png_max_levels"],
    }
    for row in sw["rows"]:
        metrics[f"fgsm_success_eps{eps_key(row['epsilon'])}"] = row["fgsm_success"]
        metrics[f"pgd_success_eps{eps_key(row['epsilon'])}"] = row["pgd_success"]
    rank = [
        {
            "rank": i + 1,
            "original": f"{c['class']} ({c['p']:.3f})",
            "attacked (float)": f"{t['class']} ({t['p']:.3f})",
            "attacked (PNG)": f"{q['class']} ({q['p']:.3f})",
        }
        for i, (c, t, q) in enumerate(zip(a["top5_clean"], a["top5_attacked"], a["top5_png"], strict=True))
    ]
    epsilons = [r["epsilon"] for r in sw["rows"]]
    return Report(
        title=f"adversarial: {p.backbone} fooled into class {p.target_class}",
        metrics=metrics,
        sections=[
            Note(
                f"Targeted attack on {p.backbone} ({photo.shape[0]} px) towards ImageNet class "
                f"{p.target_class}: step '{p.gradient}' of {p.step_size}, L-infinity bound epsilon = "
                f"{p.epsilon} in input space ({levels_text(p.backbone, p.epsilon)} grey levels), "
                f"stop at p >= {p.threshold} or {p.max_steps} steps. "
                f"{'Reached' if a['success'] else 'Did not reach'} the threshold after {a['steps']} steps: "
                f"p(target) {a['p_target_clean']:.3g} -> {a['p_target']:.3g} (float image), "
                f"{a['png_p_target']:.3g} after quantising to 8 bits"
                + (f" and {a['png_steps']} quantisation-aware steps" if a.get("png_steps") else "")
                + f" (at most {a['allowed_levels']} grey levels per RGB channel; largest change "
                f"{a['png_max_levels']})."
            ),
            Table("Top-5 (class, probability)", rank, name="top5"),
            Curve(
                "p(target) before each step",
                "p_target.png",
                {"p(target)": history.get("p_target", [])},
                x="step",
                y="p(target)",
            ),
            Grid(
                "Original, attacked, saved PNG, and their difference",
                "attack.png",
                [photo, attacked, png, difference(photo, png, DIFF_GAIN)],
                ["original", "attacked (float)", "saved PNG", f"difference x{DIFF_GAIN}"],
                cols=4,
            ),
            Note(
                f"Untargeted sweep on {len(names)} photos ({', '.join(names)}): FGSM, then PGD from the "
                "FGSM point; success = top-1 changed from the clean prediction, measured on the float "
                "images (an epsilon under one grey level cannot survive 8-bit storage)."
            ),
            Curve(
                "Untargeted success rate per epsilon",
                "sweep.png",
                {
                    "FGSM": [r["fgsm_success"] for r in sw["rows"]],
                    "PGD": [r["pgd_success"] for r in sw["rows"]],
                },
                x="epsilon (input space)",
                y="success rate (top-1 changed)",
                x_values=epsilons,
            ),
            Table(
                f"Untargeted FGSM / PGD ({p.pgd_steps} steps of {p.pgd_step_ratio} epsilon), "
                f"{len(names)} photos",
                [
                    {
                        "epsilon": r["epsilon"],
                        "grey levels": levels_text(p.backbone, r["epsilon"]),
                        "FGSM success": r["fgsm_success"],
                        "PGD success": r["pgd_success"],
                    }
                    for r in sw["rows"]
                ],
                name="sweep",
            ),
        ],
        history={k: history[k] for k in ("p_target", "p_top1", "top1") if k in history},
        weights=a["weights"],
        quality=Quality(
            metric="png_target_probability",
            value=a["png_p_target"],
            untrained=a["p_target_clean"],
            reference=p.threshold,
            value_floor=PNG_TARGET_FLOOR,
            label="p(target) of the saved PNG",
            untrained_is="the original photo",
            reference_is="the attack's target probability",
            checks=(
                Check(
                    "png_top1_is_target",
                    float(a["png_top1"] == p.target_class),
                    1.0,
                    what="PNG top-1 is the target",
                ),
                Check(
                    "png_max_change_levels",
                    a["png_max_levels"],
                    MAX_LEVELS,
                    higher_is_better=False,
                    what="largest change of the PNG in grey levels",
                ),
            ),
        ),
    )


register(
    Technique(
        name="adversarial",
        summary="targeted iterative attack and an FGSM/PGD sweep on an ImageNet classifier (Cookbook 8)",
        params_model=AdversarialParams,
        inputs={
            "photo": Input("chelsea", source="photo_source"),
            "photos": Input("photos", source="photos_source"),
            "weights": Input(lambda p: weights_entry(p.backbone, top=True), source="weights_source"),
        },
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("target_probability", "attack_steps", "png_target_probability"),
        history_x="step",
        plots={"target probability": ("p_target", "p_top1")},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {
                "max_steps": 3,
                "checkpoint_every": 3,
                "png_steps": 0,
                "sweep_epsilons": [0.0, 0.01],
                "pgd_steps": 1,
            },
            updates=lambda p, inputs: p.max_steps,
        ),
        module=__name__,
    )
)
