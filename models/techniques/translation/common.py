"""Image-to-image translation, what CycleGAN and pix2pix share: the two image domains, the
U-Net generator, the PatchGAN discriminator, the held-out scores and the report pieces.

Both learn a mapping between two domains of square images, A and B. pix2pix (Isola et al. 2017)
learns it from aligned pairs; CycleGAN (Zhu et al. 2017; Vasilev, chapter 5) from two unpaired
sets, with a generator each way and a cycle-consistency loss. The networks are Vasilev's:

- generator: a U-Net, 4 downsampling blocks (Conv 4x4 stride 2 + LeakyReLU(0.2) + instance
  normalisation, gf, 2gf, 4gf, 8gf filters), 3 upsampling blocks (UpSampling2D + Conv 4x4 + ReLU
  + instance normalisation, then the skip connection concatenated), one last upsampling to a
  Conv 4x4 with tanh: images in [-1, 1] in and out;
- discriminator: a PatchGAN, 4 such downsampling blocks (df .. 8df filters, the first without
  normalisation) and a Conv 4x4 to one channel: one real/fake score per patch, an
  (IMG_SIZE / 2**4) square of them.

Instance normalisation is `GroupNormalization(groups=-1)`: one group per channel, statistics per
image (Keras 3 has no InstanceNormalization layer; keras-contrib's is what the book imports).

Data, in a `domains.npz` both techniques' vectorize steps write (uint8, N x size x size x 3):
`train_a`, `train_b` (aligned pairs for pix2pix; B shuffled for CycleGAN, so no pair is left)
and `test_a`, `test_b` (held out; aligned wherever the source has pairs: the translations are
scored against the truth there). Sources:

- `facades` (CMP facades as pix2pix releases it): side-by-side 256x512 JPEGs, photo left, label
  map right, in train/val/test folders (train and val are trained on, test is held out);
- `horse2zebra` (the CycleGAN release): trainA, trainB, testA, testB folders of 256x256 JPEGs,
  unpaired (no truth: only the cycle reconstructions are scored);
- `photos` (the demo, offline): the bundled photos cut into tiles (A) and the tiles' edge maps
  (B: Sobel gradient magnitude, dark lines on white), a fifth of the tiles held out.
A folder, archive or s3:// prefix of one's own is read the same way (domain folders when it has
trainA/trainB, side-by-side pairs otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from models.core.errors import GdlError
from models.core.files import write_json_atomic
from models.core.params import TechniqueParams, max_pixels_param, param, source_param
from models.core.registry import StepContext

DOMAINS, META, HISTORY, FRAMES, SCORES = (
    "domains.npz",
    "meta.json",
    "history.json",
    "frames",
    "scores.json",
)
DOWNSAMPLINGS = 4  # U-Net and PatchGAN blocks of stride 2: sides must be multiples of 16
SPLITS = ("train_a", "train_b", "test_a", "test_b")
Dataset = Literal["facades", "horse2zebra", "photos"]

# What the domains of each source are, for the report.
DOMAIN_NAMES = {
    "facades": ("facade photos", "facade label maps"),
    "horse2zebra": ("horses", "zebras"),
    "photos": ("tiles of the bundled photos", "the same tiles' Sobel edge maps (dark lines on white)"),
}


class TranslationParams(TechniqueParams):
    """Parameters CycleGAN and pix2pix share (defaults: Vasilev's CycleGAN, pix2pix's paper)."""

    dataset: Dataset = param(
        "facades",
        "download",
        "Domains to translate between: facades (CMP facades, paired), horse2zebra (unpaired) or "
        "photos (the offline demo: photo tiles and their edge maps).",
    )
    data_source: str = source_param(
        "the dataset",
        offline="photos only",
        own="a folder, archive or s3:// prefix of trainA/trainB/testA/testB folders, or of side-by-side "
        "A|B pairs",
    )
    image_size: int = param(
        256,
        "vectorize",
        "Side the images are resized to (Vasilev and pix2pix: 256); at 16 the innermost blocks are 1x1.",
        ge=32,
        multiple_of=16,
    )
    max_images: int = param(
        0, "vectorize", "Images per domain and split at most, for dataset folders (0: all of them).", ge=0
    )
    max_pixels: int = max_pixels_param(ge=4)
    photo_side: int = param(
        256, "vectorize", "dataset=photos: the photos' shorter side before they are cut into tiles.", ge=16
    )
    edge_blur: float = param(
        1.0, "vectorize", "dataset=photos: Gaussian sigma (px) smoothing a photo before its edges.", ge=0
    )
    edge_floor: float = param(
        0.25,
        "vectorize",
        "dataset=photos: edges weaker than this fraction of the photo's 98th-percentile edge are dropped.",
        ge=0,
        lt=1,
    )
    held_out: float = param(
        0.2,
        "vectorize",
        "Fraction held out for scoring where the source has no test split (the demo's photos).",
        gt=0,
        lt=1,
    )
    gf: int = param(32, "train", "Filters of the generator's first block (Vasilev: 32).", ge=1)
    df: int = param(64, "train", "Filters of the discriminator's first block (Vasilev: 64).", ge=1)
    learning_rate: float = param(2e-4, "train", "Adam learning rate (Vasilev, Zhu et al.: 2e-4).", gt=0)
    beta_1: float = param(0.5, "train", "Adam beta_1 (Vasilev, Zhu et al.: 0.5).", ge=0, lt=1)
    batch_size: int = param(1, "train", "Images per step (Vasilev, Zhu et al., Isola et al.: 1).", ge=1)
    flip: bool = param(
        True, "train", "Mirror training images at random (pix2pix's jitter, without the crop)."
    )
    checkpoint_every: int = param(1000, "train", "Steps between checkpoints.", ge=1)
    frame_every: int = param(2000, "train", "Steps between frames of the first held-out image.", ge=1)
    samples: int = param(6, "sample", "Held-out images shown translated in the report.", ge=1)

    @model_validator(mode="after")
    def _fits(self):
        if self.dataset == "photos" and self.photo_side < self.image_size:
            raise ValueError(
                f"photo_side ({self.photo_side}) must be at least image_size ({self.image_size})"
            )
        return self


def domain_names(p: TranslationParams) -> tuple[str, str]:
    known = p.dataset == "photos" or p.data_source in ("remote", "offline")
    return DOMAIN_NAMES[p.dataset] if known else ("domain A", "domain B")


# ---------------------------------------------------------------------------------------------
# Data


def edge_map(image: np.ndarray, blur: float = 0.0, floor: float = 0.0) -> np.ndarray:
    """A line drawing of a uint8 RGB image: Sobel gradient magnitude of its luminance, dark
    lines on white, scaled by the image's own 98th percentile (uint8 RGB, same size).

    `blur`: the Gaussian sigma (pixels) the luminance is smoothed with first, so film grain and
    JPEG noise do not draw lines; `floor`: the fraction of the scale under which an edge is
    dropped (white) and from which lines start, so the drawing is lines on white rather than a
    grey texture. Both make the drawing a function a small network can learn from a tile."""
    grey = image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        grey = gaussian_filter(grey, blur, mode="nearest")
    grey = np.pad(grey, 1, mode="edge")
    gx = (grey[:-2, 2:] + 2 * grey[1:-1, 2:] + grey[2:, 2:]) - (
        grey[:-2, :-2] + 2 * grey[1:-1, :-2] + grey[2:, :-2]
    )
    gy = (grey[2:, :-2] + 2 * grey[2:, 1:-1] + grey[2:, 2:]) - (
        grey[:-2, :-2] + 2 * grey[:-2, 1:-1] + grey[:-2, 2:]
    )
    magnitude = np.hypot(gx, gy)
    scale = max(float(np.percentile(magnitude, 98)), 1e-6)
    strength = np.clip((magnitude / scale - floor) / (1.0 - floor), 0.0, 1.0)
    return np.repeat(np.round((1.0 - strength) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def photo_domains(folder: Path, p: TranslationParams) -> tuple[dict[str, np.ndarray], list[str]]:
    """The demo's domains: each photo (shorter side `photo_side`) cut into non-overlapping
    `image_size` tiles (A) and the same tiles of its edge map (B), pairs held out at random."""
    from models.core.images import load_image, resize
    from models.inputs.formats import image_files

    files = image_files(folder)
    if not files:
        raise GdlError(f"photos {folder.name} hold no images")
    tiles_a, tiles_b = [], []
    s = p.image_size
    for f in files:
        photo = load_image(f, max_pixels=p.max_pixels, origin=f"photo {f.relative_to(folder).as_posix()}")
        h, w = photo.shape[:2]
        photo = resize(photo, height=p.photo_side) if h <= w else resize(photo, width=p.photo_side)
        # Of the whole photo: a tile's border has the edges its neighbours see.
        edges = edge_map(photo, p.edge_blur, p.edge_floor)
        for top in range(0, photo.shape[0] - s + 1, s):
            for left in range(0, photo.shape[1] - s + 1, s):
                tiles_a.append(photo[top : top + s, left : left + s])
                tiles_b.append(edges[top : top + s, left : left + s])
    order = np.random.default_rng(p.seed).permutation(len(tiles_a))
    n_test = max(1, round(p.held_out * len(order)))
    if len(order) - n_test < 1:
        raise GdlError(f"photos {folder.name}: {len(order)} tile(s) of {s}px, too few to hold some out")
    test, train = order[:n_test], order[n_test:]
    a, b = np.stack(tiles_a), np.stack(tiles_b)
    return {"train_a": a[train], "train_b": b[train], "test_a": a[test], "test_b": b[test]}, [
        f.relative_to(folder).as_posix() for f in files
    ]


def _load_domain(files: Sequence[Path], root: Path, what: str, p: TranslationParams) -> list[np.ndarray]:
    """The images of one domain, every one the size of the first (as the datasets ship them)."""
    from models.core.images import load_image

    images = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        image = load_image(f, max_pixels=p.max_pixels, origin=f"{what} image {rel}")
        if images and image.shape != images[0].shape:
            first = files[0].relative_to(root).as_posix()
            raise GdlError(
                f"{what}: {rel} is {image.shape[1]}x{image.shape[0]} but {first} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}; the images of one domain must share one size"
            )
        images.append(image)
    return images


def _square(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    from models.core.images import resize

    return np.stack([resize(im, size=(size, size)) for im in images]).astype(np.uint8)


def _domain_folders(root: Path) -> dict[str, Path] | None:
    """trainA, trainB, testA, testB (CycleGAN's layout), at the top or one folder down."""
    for base in [root, *sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))]:
        found = {
            name: base / name for name in ("trainA", "trainB", "testA", "testB") if (base / name).is_dir()
        }
        if found:
            missing = {"trainA", "trainB"} - set(found)
            if missing:
                raise GdlError(f"dataset folder {base.name}: domain folder {sorted(missing)[0]} is missing")
            return found
    return None


def _split(rel: str) -> str:
    parts = {part.lower() for part in Path(rel).parts[:-1]}
    return "test" if "test" in parts else "train"


def folder_domains(
    root: Path, p: TranslationParams, paired: bool, origin: str = ""
) -> tuple[dict[str, np.ndarray], list[str], bool]:
    """A dataset folder as domains: (splits, source files, whether the test split is paired).

    Domain folders (trainA, trainB, testA, testB; pairs matched by order when `paired`) or, with
    none, side-by-side images A|B (pix2pix's layout; those under a `test` folder held out, or a
    `held_out` fraction of them when there is no such folder)."""
    from models.inputs.formats import image_files

    origin = origin or root.name

    def limited(files: list[Path]) -> list[Path]:
        return files[: p.max_images] if p.max_images else files

    folders = _domain_folders(root)
    if folders is not None:
        splits, names, stems = {}, [], {}
        for split, folder in (
            ("train_a", "trainA"),
            ("train_b", "trainB"),
            ("test_a", "testA"),
            ("test_b", "testB"),
        ):
            files = limited(image_files(folders[folder])) if folder in folders else []
            if not files and split.startswith("train"):
                raise GdlError(f"domain folder {folder} of {origin} holds no images")
            splits[split] = _load_domain(files, root, f"domain {folder}", p)
            names += [f.relative_to(root).as_posix() for f in files]
            stems[folder] = [f.stem for f in files]
        for split in ("train", "test"):
            a, b = splits[f"{split}_a"], splits[f"{split}_b"]
            if paired and len(a) != len(b):
                raise GdlError(
                    f"mismatched pair counts in {origin}: {split}A holds {len(a)} images, "
                    f"{split}B {len(b)}; paired translation needs one B for every A"
                )
        if not splits["test_a"] or not splits["test_b"]:
            raise GdlError(f"{origin} has no held-out images: add testA and testB folders")
        arrays = {k: _square(v, p.image_size) for k, v in splits.items()}
        # Test images of the same names in testA and testB are pairs (pix2pix's A/B folder layout).
        return arrays, names, paired or stems["testA"] == stems["testB"]

    files = image_files(root)
    if not files:
        raise GdlError(f"{origin} holds no images (neither domain folders trainA/trainB nor A|B pairs)")
    rels = [f.relative_to(root).as_posix() for f in files]
    test = [f for f, rel in zip(files, rels, strict=True) if _split(rel) == "test"]
    train = [f for f, rel in zip(files, rels, strict=True) if _split(rel) == "train"]
    if not test:
        order = np.random.default_rng(p.seed).permutation(len(files))
        n_test = max(1, round(p.held_out * len(files)))
        test, train = [files[i] for i in sorted(order[:n_test])], [files[i] for i in sorted(order[n_test:])]
    if not train:
        raise GdlError(f"{origin}: every pair is held out; nothing is left to train on")
    arrays = {}
    for split, chosen in (("train", limited(train)), ("test", limited(test))):
        pairs = _load_domain(chosen, root, "pairs", p)
        h, w = pairs[0].shape[:2]
        if w != 2 * h:
            rel = chosen[0].relative_to(root).as_posix()
            raise GdlError(
                f"pair image {rel} is {w}x{h}; side-by-side pairs are twice as wide as high (A left, B right)"
            )
        arrays[f"{split}_a"] = _square([im[:, :h] for im in pairs], p.image_size)
        arrays[f"{split}_b"] = _square([im[:, h:] for im in pairs], p.image_size)
    return arrays, [f.relative_to(root).as_posix() for f in limited(train) + limited(test)], True


def vectorize_domains(p: TranslationParams, ctx: StepContext, paired: bool) -> dict[str, Any]:
    """Both techniques' vectorize step: domains.npz and meta.json. Unpaired (CycleGAN): the
    training B images are shuffled, so no aligned pair is left to learn from."""
    folder = ctx.inputs["data"]
    if p.dataset == "photos":
        arrays, files = photo_domains(folder, p)
        test_paired = True
    else:
        from models.inputs.catalog import redact

        source = p.dataset if p.data_source in ("remote", "offline") else redact(p.data_source)
        arrays, files, test_paired = folder_domains(folder, p, paired, origin=source)
    if not paired:
        arrays["train_b"] = arrays["train_b"][
            np.random.default_rng([p.seed, 1]).permutation(len(arrays["train_b"]))
        ]
    np.savez(ctx.out / DOMAINS, **arrays)
    counts = {k: len(v) for k, v in arrays.items()}
    write_json_atomic(
        ctx.out / META,
        {
            "files": files,
            "counts": counts,
            "test_paired": test_paired,
            "train_paired": paired,
            "domains": domain_names(p),
        },
    )
    return counts


def load_domains(processed: Path) -> dict[str, np.ndarray]:
    with np.load(processed / DOMAINS, allow_pickle=False) as saved:
        return {k: saved[k] for k in SPLITS}


def load_meta(processed: Path) -> dict[str, Any]:
    return json.loads((processed / META).read_text())


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 -1..1 (tanh's range)."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def from_unit(x: Any) -> np.ndarray:
    """-1..1 -> uint8 0..255, rounded and clipped."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def training_batch(
    images: np.ndarray,
    batch: int,
    seed: int,
    step: int,
    stream: int,
    flip: bool,
    pick: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A batch (in -1..1) and the indices picked, the same for the same (seed, step, stream): a
    resumed run trains on exactly the batches an uninterrupted one would. Give `pick` to take
    the same images (a pair's other half) with the same mirroring."""
    rng = np.random.default_rng([seed, step, stream])
    chosen = rng.integers(len(images), size=batch) if pick is None else pick
    mirror = np.random.default_rng([seed, step]).random(batch) < 0.5 if flip else np.zeros(batch, bool)
    out = images[chosen]
    out = np.where(mirror[:, None, None, None], out[:, :, ::-1], out)
    return to_unit(out), chosen


# ---------------------------------------------------------------------------------------------
# Networks


def instance_norm(name: str):
    """Instance normalisation: one group per channel, statistics per image."""
    import keras

    return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def _down(x, filters: int, name: str, norm: bool = True):
    from keras import layers

    x = layers.Conv2D(filters, 4, strides=2, padding="same", name=f"{name}_conv")(x)
    x = layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)
    return instance_norm(f"{name}_in")(x) if norm else x


def build_unet_generator(size: int, gf: int = 32, name: str = "generator"):
    """Vasilev's U-Net: (size, size, 3) in -1..1 -> the same shape in -1..1 (tanh)."""
    import keras
    from keras import layers

    check_size(size)
    inputs = keras.Input((size, size, 3), name="image")
    skips, x = [], inputs
    for i, filters in enumerate((gf, 2 * gf, 4 * gf, 8 * gf)):
        x = _down(x, filters, f"down_{i + 1}")
        skips.append(x)
    for i, (filters, skip) in enumerate(zip((4 * gf, 2 * gf, gf), reversed(skips[:-1]), strict=True)):
        x = layers.UpSampling2D(2, name=f"up_{i + 1}_resize")(x)
        x = layers.Conv2D(filters, 4, padding="same", activation="relu", name=f"up_{i + 1}_conv")(x)
        x = instance_norm(f"up_{i + 1}_in")(x)
        x = layers.Concatenate(name=f"up_{i + 1}_skip")([x, skip])
    x = layers.UpSampling2D(2, name="out_resize")(x)
    outputs = layers.Conv2D(3, 4, padding="same", activation="tanh", name="out_conv")(x)
    return keras.Model(inputs, outputs, name=name)


def build_patchgan(size: int, df: int = 64, channels: int = 3, name: str = "discriminator"):
    """Vasilev's PatchGAN: an image (or an image pair stacked on channels, pix2pix's conditional
    discriminator) -> one unbounded real/fake score per patch, (size / 16) x (size / 16)."""
    import keras
    from keras import layers

    check_size(size)
    inputs = keras.Input((size, size, channels), name="image")
    x = inputs
    for i, filters in enumerate((df, 2 * df, 4 * df, 8 * df)):
        x = _down(x, filters, f"down_{i + 1}", norm=i > 0)
    outputs = layers.Conv2D(1, 4, padding="same", name="validity")(x)
    return keras.Model(inputs, outputs, name=name)


def check_size(size: int) -> None:
    if size % 2**DOWNSAMPLINGS or size < 2**DOWNSAMPLINGS:
        raise GdlError(f"image_size must be a multiple of {2**DOWNSAMPLINGS} (got {size})")


def adam(p: TranslationParams, variables: Sequence[Any]):
    """Adam(2e-4, 0.5), built on the variables it trains (optimize_resumable checkpoints it)."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=p.learning_rate, beta_1=p.beta_1)
    optimizer.build(list(variables))
    return optimizer


def train_networks(
    p: TranslationParams,
    ctx: StepContext,
    gan: Any,
    step: Callable[[Any], Mapping[str, Any]],
    snapshot: Callable[[int], None],
    device: str,
    sizes: Mapping[str, int],
) -> dict[str, Any]:
    """Run a translation technique's compiled `step` with the shared resumable loop (its
    generators and discriminators in `gan.variables`, both optimizers checkpointed), then write
    and return the training summary: the last steps' mean losses, speed, `sizes` (parameter
    counts) and the device."""
    import time

    from models.toolkit.training import optimize_resumable, step_summary

    t0 = time.perf_counter()
    result = optimize_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        variables=gan.variables,
        optimizer=[gan.g_opt, gan.d_opt],
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
    history = result["history"]
    last = slice(-min(20, len(history["g_loss"])), None)
    final = {
        **{f"train_{k}": float(np.mean(v[last])) for k, v in history.items()},
        **step_summary(result, seconds),
        **sizes,
        "device": device,
    }
    write_json_atomic(ctx.out / HISTORY, {"final": final, "history": history})
    return {k: v for k, v in final.items() if v is not None}


def translator(generator, batch: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images -> uint8 translations, through one compiled forward pass per batch."""
    import tensorflow as tf

    size = generator.input_shape[1]
    forward = tf.function(
        lambda x: generator(x, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        autograph=False,
    )

    def translate(images: np.ndarray) -> np.ndarray:
        out = [
            forward(tf.constant(to_unit(images[i : i + batch]))).numpy() for i in range(0, len(images), batch)
        ]
        return from_unit(np.concatenate(out)) if out else images[:0].copy()

    return translate


# ---------------------------------------------------------------------------------------------
# Scores


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean L1 (0..1 scale), PSNR (dB) and SSIM of uint8 translations against the truth."""
    import tensorflow as tf

    if predicted.shape != truth.shape or not len(truth):
        raise GdlError(f"scores: {predicted.shape} translations for {truth.shape} truths")
    x = tf.constant(predicted.astype(np.float32) / 255.0)
    y = tf.constant(truth.astype(np.float32) / 255.0)
    side = min(truth.shape[1:3])
    return {
        "l1": float(tf.reduce_mean(tf.abs(x - y))),
        # Identical images have an infinite PSNR: capped at 100 dB so metrics stay finite JSON.
        "psnr": float(tf.reduce_mean(tf.minimum(tf.image.psnr(x, y, max_val=1.0), 100.0))),
        "ssim": float(tf.reduce_mean(tf.image.ssim(x, y, max_val=1.0, filter_size=min(11, side)))),
    }


def blank_page(truth: np.ndarray) -> np.ndarray:
    """The constant image that stands for "drew nothing": every pixel the truths' per-channel
    median (white for edge maps, where a blank page already scores an SSIM of ~0.6)."""
    median = np.median(truth.reshape(-1, truth.shape[-1]), axis=0).round().astype(np.uint8)
    return np.broadcast_to(median, truth.shape).copy()


# ---------------------------------------------------------------------------------------------
# Report pieces


DISPLAY_SIDE = 96  # images smaller than this are enlarged (nearest neighbour) in the report


def enlarged(image: np.ndarray) -> np.ndarray:
    """A small image blown up by a whole factor (pixels kept sharp), so a 32px tile is visible."""
    factor = max(1, -(-DISPLAY_SIDE // max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
