"""Image datasets for the latent generative models (VAE, GANs), vectorized once into normalised
arrays with a held-out split.

A catalog input (MNIST's `mnist.npz`, CIFAR-10's binary batches, a folder of face images) is
read into uint8 images, optionally filtered to one class (Chollet's frogs are CIFAR-10 class 6),
shuffled with a seed, capped, resized to a square side, and split into `train.npz` and
`heldout.npz` (arrays `x`: float32 NHWC in [-1, 1] for tanh generators or [0, 1] for the VAE's
sigmoid decoder; `y`: int64 labels, -1 where the data has none). `imageset.json` says what the
data is in one line (the offline stand-ins say what they stand in for), its shape, counts,
classes and range. The held-out images are what FID/KID compare generated images with.

Readers never unpickle: CIFAR-10 is read from its binary version (one label byte + 3,072 pixel
bytes per record), MNIST from Keras' `.npz` layout with pickles refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.core.errors import GdlError
from models.core.files import npz_bytes, read_json, write_bytes_atomic, write_json_atomic

ValueRange = Literal["tanh", "unit"]
VALUE_RANGES = ("tanh", "unit")
SPLITS = ("train", "heldout")
# The fewest held-out images: the sample step's FID and KID fit statistics to at least two.
MIN_HELD_OUT = 2
META = "imageset.json"
NO_LABEL = -1
RESAMPLE = "bicubic"  # Pillow's bicubic is antialiased when shrinking: one fixed filter for every set

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_SIDE = 32
CIFAR_RECORD = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE  # label byte, then the red, green and blue planes
_CIFAR_BATCH = re.compile(r"^(data_batch_\d+|test_batch)\.bin$")


# ---------------------------------------------------------------------------------------------
# Readers: a fetched input -> uint8 images (N, H, W, C) or a list of (H, W, C), int64 labels


def _read_mnist(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Keras' `mnist.npz` layout (x_train, y_train, x_test, y_test): both splits pooled, the
    held-out split is drawn by `vectorize_image_set`."""
    from models.inputs.formats import load_arrays

    arrays = load_arrays(path, f"mnist input {path.name}")
    if not {"x_train", "x_test"} <= set(arrays):
        raise GdlError(
            f"mnist input {path.name} holds arrays {sorted(arrays)}; expected Keras' mnist.npz layout "
            "(x_train, y_train, x_test, y_test)"
        )
    parts = []
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3:
            raise GdlError(
                f"mnist input {path.name}: x_{split} is {x.dtype} of shape {x.shape}; "
                "expected uint8 images (N, height, width)"
            )
        y = arrays.get(f"y_{split}")
        if y is None:
            y = np.full(len(x), NO_LABEL)
        elif y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise GdlError(
                f"mnist input {path.name}: y_{split} is {y.dtype} of shape {y.shape}; "
                f"expected {len(x)} integer labels"
            )
        parts.append((x[..., None], y.astype(np.int64)))
    x = np.concatenate([p[0] for p in parts])
    return x, np.concatenate([p[1] for p in parts]), tuple(str(d) for d in range(10))


def _read_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """CIFAR-10's binary batches (`data_batch_1.bin` ... `test_batch.bin`, anywhere in the folder)."""
    if not folder.is_dir():
        raise GdlError(f"cifar10 input {folder.name} is not a folder of CIFAR-10 binary batches")
    batches = sorted(p for p in folder.rglob("*.bin") if _CIFAR_BATCH.match(p.name))
    if not batches:
        raise GdlError(
            f"cifar10 input {folder.name} holds no CIFAR-10 binary batches (data_batch_N.bin, "
            "test_batch.bin); give the binary version, cifar-10-binary.tar.gz"
        )
    images, labels = [], []
    for batch in batches:
        raw = np.fromfile(batch, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise GdlError(
                f"cifar10 batch {batch.name} has {raw.size} bytes, not a whole number of "
                f"{CIFAR_RECORD}-byte records"
            )
        records = raw.reshape(-1, CIFAR_RECORD)
        y = records[:, 0].astype(np.int64)
        if y.max() >= len(CIFAR10_CLASSES):
            raise GdlError(f"cifar10 batch {batch.name} holds label {int(y.max())}; CIFAR-10 has 0..9")
        planes = records[:, 1:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
        images.append(planes.transpose(0, 2, 3, 1))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels), CIFAR10_CLASSES


def _read_image_folder(folder: Path) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """Every image of a folder (recursively, in name order) as RGB, unlabelled."""
    from models.core.images import load_image
    from models.inputs.formats import image_files

    if not folder.is_dir():
        raise GdlError(f"image input {folder.name} is not a folder of images")
    files = image_files(folder)
    images = [load_image(f, "RGB", origin=f"{folder.name}/{f.relative_to(folder).as_posix()}") for f in files]
    return images, np.full(len(images), NO_LABEL, np.int64), ()


READERS: dict[str, Callable[[Path], tuple[Any, np.ndarray, tuple[str, ...]]]] = {
    "mnist": _read_mnist,
    "cifar10": _read_cifar10,
    "lfw": _read_image_folder,
}


# ---------------------------------------------------------------------------------------------
# Vectorizing


def _square(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central square of an image, resized to `size` (kept as it is when `size` is None)."""
    from models.core.images import center_crop, resize

    h, w = image.shape[:2]
    if h != w:
        side = min(h, w)
        image = center_crop(image, side, side)
    if size is None or size == image.shape[0]:
        return np.ascontiguousarray(image)
    out = resize(image, size=(size, size), resample=RESAMPLE)
    return out[..., None] if out.ndim == 2 else out


def _uniform(images: Any, size: int | None, dataset: str) -> np.ndarray:
    """Images (an array or a list of arrays) as one uint8 (N, H, W, C) array of square images."""
    if isinstance(images, np.ndarray) and size is None and images.shape[1] == images.shape[2]:
        return images
    squared = [_square(im, size) for im in images]
    shapes = {im.shape for im in squared}
    if len(shapes) > 1:
        raise GdlError(
            f"dataset {dataset}: images come in {len(shapes)} sizes (e.g. {sorted(shapes)[:2]}); "
            "set size to resize them all to one square side"
        )
    return np.stack(squared)


def normalise(images: np.ndarray, value_range: ValueRange) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1] (tanh) or [0, 1] (unit)."""
    _check_range(value_range)
    x = images.astype(np.float32)
    return x / np.float32(127.5) - np.float32(1.0) if value_range == "tanh" else x / np.float32(255.0)


def _check_range(value_range: str) -> None:
    if value_range not in VALUE_RANGES:
        raise GdlError(f"value_range {value_range!r} is not valid; use one of {', '.join(VALUE_RANGES)}")


def describe_input(dataset: str, source: str | None) -> str:
    """One line saying what a technique's `source` reads for `dataset`: the original, the offline
    stand-in (with its own honest description), or the user's own location."""
    from models.inputs.catalog import describe_source, get_dataset

    if source is None:
        return f"read as {dataset} (source not stated)"
    entry = get_dataset(dataset)
    location = {"remote": entry.remote, "offline": f"offline:{dataset}"}.get(source) or source
    return describe_source(entry, location)


def vectorize_image_set(
    dataset: str,
    path: Path,
    out: Path,
    *,
    value_range: ValueRange,
    heldout: float,
    seed: int,
    class_filter: int | None = None,
    size: int | None = None,
    limit: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Read `dataset`'s fetched input at `path`, write `out/train.npz`, `out/heldout.npz` and
    `out/imageset.json`, and return what imageset.json holds.

    The images of `class_filter` only (labelled sets), shuffled with `seed`, the first `limit` of
    them, each cut to its central square and resized to `size` x `size` (bicubic), then split:
    `heldout` of them (at least one) held out. `source` (the technique's source param: remote,
    offline or a location of one's own) words the description: pass it, or the description can
    only say which dataset the input was read as. Every check runs before
    anything is written; imageset.json is written last.
    """
    _check_range(value_range)
    if dataset not in READERS:
        raise GdlError(f"unknown image dataset {dataset!r}; valid: {', '.join(sorted(READERS))}")
    if not 0 < heldout < 1:
        raise GdlError(f"heldout must be a fraction between 0 and 1, exclusive (got {heldout})")
    if size is not None and size < 1:
        raise GdlError(f"size must be at least 1 pixel (got {size})")
    if limit is not None and limit < 2:
        raise GdlError(f"limit must be at least 2 images, one to train on and one held out (got {limit})")
    images, labels, classes = READERS[dataset](Path(path))
    if class_filter is not None:
        if not classes:
            raise GdlError(f"dataset {dataset} has no labels: class_filter must be null (got {class_filter})")
        if not 0 <= class_filter < len(classes):
            raise GdlError(
                f"class_filter {class_filter} is not a class of {dataset}; valid: 0..{len(classes) - 1}"
            )
    keep = np.flatnonzero(labels == class_filter) if class_filter is not None else np.arange(len(labels))
    if len(keep) == 0:
        what = f" of class {class_filter}" if class_filter is not None else ""
        raise GdlError(f"dataset {dataset} at {Path(path).name} holds no images{what}")
    order = keep[np.random.default_rng(seed).permutation(len(keep))][:limit]
    n_held = max(1, int(round(len(order) * heldout)))
    if n_held < MIN_HELD_OUT:
        raise GdlError(
            f"dataset {dataset}: held_out={heldout:g} of its {len(order)} images is {n_held}; "
            "the sample step scores against the held-out split (FID, KID) and needs at least "
            f"{MIN_HELD_OUT} images in it: "
            "raise held_out or limit, or use a larger image set"
        )
    if len(order) - n_held < 1:
        raise GdlError(
            f"dataset {dataset}: {len(order)} images leave none to train on with heldout={heldout}"
        )
    picked = [images[i] for i in order] if isinstance(images, list) else images[order]
    chosen = _uniform(picked, size, dataset)
    x = normalise(chosen, value_range)
    y = labels[order]
    split = {"heldout": (x[:n_held], y[:n_held]), "train": (x[n_held:], y[n_held:])}
    shape = [int(d) for d in x.shape[1:]]
    lo, hi = (-1, 1) if value_range == "tanh" else (0, 1)
    filtered = f", class {class_filter} ({classes[class_filter]}) only" if class_filter is not None else ""
    meta = {
        "dataset": dataset,
        "description": (
            f"{describe_input(dataset, source)}{filtered}; {len(order):,} images of "
            f"{'x'.join(map(str, shape))} in [{lo}, {hi}]"
        ),
        "shape": shape,
        "counts": {name: int(len(split[name][1])) for name in SPLITS},
        "classes": [int(c) for c in np.unique(y) if c != NO_LABEL],
        "class_names": list(classes),
        "class_filter": class_filter,
        "range": value_range,
        "size": size,
        "limit": limit,
        "seed": seed,
        "heldout": heldout,
        "resample": RESAMPLE if size is not None else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        xs, ys = split[name]
        write_bytes_atomic(out / f"{name}.npz", npz_bytes({"x": xs, "y": ys}))
    write_json_atomic(out / META, meta)
    return meta


# ---------------------------------------------------------------------------------------------
# Reading back


def image_set_info(folder: Path) -> dict[str, Any]:
    """What `vectorize_image_set` wrote into `folder/imageset.json`."""
    path = Path(folder) / META
    if not path.is_file():
        raise GdlError(f"{folder} holds no {META}: vectorize the image set first")
    return read_json(path)


def load_image_set(folder: Path, split: Literal["train", "heldout"]) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 NHWC, y int64) of one split of a vectorized image set."""
    if split not in SPLITS:
        raise GdlError(f"split {split!r} is not valid; use one of {', '.join(SPLITS)}")
    path = Path(folder) / f"{split}.npz"
    if not path.is_file():
        raise GdlError(f"{folder} holds no {split}.npz: vectorize the image set first")
    with np.load(path, allow_pickle=False) as saved:
        x, y = saved["x"], saved["y"]
    if x.dtype != np.float32 or x.ndim != 4 or y.shape != (len(x),):
        raise GdlError(
            f"{path}: x is {x.dtype} {x.shape} and y {y.dtype} {y.shape}; expected float32 (N, H, W, C) "
            "and N labels"
        )
    return x, y.astype(np.int64)


def to_uint8_images(x: np.ndarray, value_range: ValueRange) -> np.ndarray:
    """Normalised images (any shape) back to uint8 0..255, for grids and PNGs."""
    from models.core.images import to_uint8

    _check_range(value_range)
    x = np.asarray(x, dtype=np.float32)
    return to_uint8((x + 1.0) / 2.0 if value_range == "tanh" else x)
