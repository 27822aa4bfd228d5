"""tiny_image: a technique that exists only for the tests, exercising the image foundation.

A miniature DeepDream: gradient ascent (Adam) on a photo to excite one layer of the offline
ImageNet MobileNetV2, with the resumable optimisation loop, frames every few iterations, a
folder of textures read from a (safely extracted) archive, and every kind of report section.
It is registered only when GDL_EXTRA_TECHNIQUES names it, so no generated file lists it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.core.files import write_json_atomic
from models.core.params import TechniqueParams, param
from models.core.registry import Input, StepContext, Technique, register
from models.inputs.formats import image_files
from models.reporting.report import Animation, Curve, Grid, Image, Note, Report, Table, Text
from models.toolkit.training import optimize_resumable


class TinyImageParams(TechniqueParams):
    photo_source: str = param("remote", "download", "Where to read the photo (catalog: chelsea).")
    textures_source: str = param("offline", "download", "Where to read the textures (a folder or archive).")
    weights_source: str = param("remote", "download", "MobileNetV2 weights: remote, offline or none.")
    size: int = param(64, "vectorize", "Side of the square the photo and textures are resized to.", ge=32)
    layer: str = param("block_5", "train", "MobileNetV2 layer whose activations are maximised.")
    iterations: int = param(12, "train", "Gradient-ascent iterations.", ge=1)
    learning_rate: float = param(0.05, "train", "Adam step on the preprocessed image.", gt=0)
    checkpoint_every: int = param(4, "train", "Iterations between checkpoints.", ge=1)
    frame_every: int = param(4, "train", "Iterations between saved frames.", ge=1)
    max_loss: float = param(1e9, "train", "Stop early once the loss exceeds this.", gt=0)


DEMO = {"photo_source": "offline", "weights_source": "offline"}
TINY = {"iterations": 6, "checkpoint_every": 2, "frame_every": 2}


def vectorize(p: TinyImageParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import load_image, resize

    photo = resize(load_image(ctx.inputs["photo"]), size=(p.size, p.size))
    textures = [resize(load_image(f), size=(p.size, p.size)) for f in image_files(ctx.inputs["textures"])]
    np.save(ctx.out / "photo.npy", photo, allow_pickle=False)
    np.save(ctx.out / "textures.npy", np.stack(textures), allow_pickle=False)
    names = [f.name for f in image_files(ctx.inputs["textures"])]
    write_json_atomic(ctx.out / "meta.json", {"textures": names})
    return {"textures": len(textures)}


def train(p: TinyImageParams, ctx: StepContext) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from models.core.images import save_png
    from models.toolkit.backbones import deprocess, feature_model, load_backbone, preprocess

    backbone, weights = load_backbone("mobilenet_v2", ctx.inputs.get("weights"), include_top=False)
    features = feature_model(backbone, [p.layer])
    photo = np.load(ctx.upstream["vectorize"] / "photo.npy")
    image = keras.Variable(preprocess("mobilenet_v2", photo)[None].astype("float32"), name="image")
    optimizer = keras.optimizers.Adam(learning_rate=p.learning_rate)

    @tf.function
    def step(_):
        with tf.GradientTape() as tape:
            out = features(image)
            activation = out[p.layer] if isinstance(out, dict) else out[0]
            loss = tf.reduce_mean(tf.square(activation))
        optimizer.apply_gradients([(-tape.gradient(loss, image), image)])
        return {"loss": loss}

    frames = ctx.out / "frames"
    frames.mkdir(exist_ok=True)
    result = optimize_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        variables={"image": image},
        optimizer=optimizer,
        step=step,
        iterations=p.iterations,
        checkpoint_every=p.checkpoint_every,
        should_stop=lambda m: m["loss"] > p.max_loss,
        snapshot_every=p.frame_every,
        snapshot=lambda i: save_png(
            frames / f"frame-{i + 1:04d}.png", deprocess("mobilenet_v2", image.numpy()[0])
        ),
        progress=ctx.progress,
        log=ctx.log,
    )
    save_png(ctx.out / "dream.png", deprocess("mobilenet_v2", image.numpy()[0]))
    write_json_atomic(ctx.out / "history.json", {**result, "weights": weights})
    return {"iterations": result["iterations"], "final_loss": result["history"]["loss"][-1]}


def sample(p: TinyImageParams, ctx: StepContext) -> dict[str, Any]:
    import shutil

    shutil.copyfile(ctx.upstream["train"] / "dream.png", ctx.out / "dream.png")
    return {"files": ["dream.png"]}


def report(p: TinyImageParams, dirs: dict[str, Path]) -> Report:
    from models.core.images import load_image

    history = json.loads((dirs["train"] / "history.json").read_text())
    textures = np.load(dirs["vectorize"] / "textures.npy")
    names = json.loads((dirs["vectorize"] / "meta.json").read_text())["textures"]
    frames = [load_image(f) for f in sorted((dirs["train"] / "frames").glob("frame-*.png"))]
    photo = np.load(dirs["vectorize"] / "photo.npy")
    losses = history["history"]["loss"]
    return Report(
        title="tiny_image: a test technique",
        metrics={"final_loss": losses[-1], "iterations": history["iterations"]},
        sections=[
            Note(f"Layer {p.layer} of MobileNetV2."),
            Image("Dream", "dream.png", load_image(dirs["sample"] / "dream.png")),
            Grid("Photo and textures", "inputs.png", [photo, *textures], ["photo", *names]),
            Animation("Frames", "frames.gif", frames or [photo], None),
            Curve(
                "Loss per iteration", "loss.png", {"loss": losses}, x="iteration", y="mean squared activation"
            ),
            Table("Loss", [{"iteration": i + 1, "loss": v} for i, v in enumerate(losses)]),
            Text("Weights", history["weights"]),
        ],
        history={"loss": losses},
        weights=history["weights"],
    )


register(
    Technique(
        name="tiny_image",
        summary="a test-only miniature DeepDream",
        params_model=TinyImageParams,
        inputs={
            "photo": Input("chelsea", source="photo_source"),
            "textures": Input("textures", source="textures_source"),
            "weights": Input("mobilenet_v2_imagenet", source="weights_source", optional=True),
        },
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("final_loss",),
        history_x="iteration",
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        module=__name__,
    )
)
