"""A loopback mirror: small stand-ins of every remote source of the catalog, served on 127.0.0.1.

Each stand-in has the real published file's name, format and layout (archive members, headers,
array layouts, HDF5 groups), as the real files are known from their publishers, and small
synthetic content. The layouts are written from what the real files look like, not from how
this project's readers parse them: a reader that disagrees with a real file fails here too.

    folder = mirror_folder(tmp_path_factory)     # built once per pytest session (weights are big)
    with serve(folder) as base:                  # "http://127.0.0.1:<port>"
        urllib.request.urlopen(f"{base}/mnist.npz")

`make_mirror(folder)` writes the files and returns {file name: sha256}. The three Keras weight
files are written by a child Python (started first, so it runs beside the other files): building
the Keras models there leaves the calling process's Keras name counters and memory alone.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Fixed archive timestamps, so that the same call writes the same bytes.
ZIP_TIME = (2016, 6, 1, 12, 0, 0)
TAR_MTIME = 1464782400  # 2016-06-01 12:00 UTC

SKIMAGE_FILES = (
    "chelsea.png",
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "brick.png",
)
WEIGHT_FILES = (
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_RECORDS = 40  # per batch file (the real ones have 10,000)
MNIST_TRAIN, MNIST_TEST = 600, 100


def _rng(tag: str) -> np.random.Generator:
    """One generator per file, so each file's bytes do not depend on the others."""
    return np.random.default_rng(zlib.crc32(tag.encode()))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an HxWx3 (RGB) or HxW (greyscale) uint8 array."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


# --- archives ----------------------------------------------------------------------------------


def _zip_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A zip as `zip -r` writes it: directory entries (data None, name ending in /) and deflated
    files, Unix attributes, a fixed timestamp."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.create_system = 3
            if data is None:
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
    return out.getvalue()


def _tar_gz_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A gzipped GNU tar: directories (data None) and files, a fixed timestamp."""
    out = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=TAR_MTIME) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as archive,
    ):
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = TAR_MTIME
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- synthetic pictures -------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy / max(h - 1, 1), xx / max(w - 1, 1)


def _scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like outdoor picture: sky gradient, horizon, buildings or hills, blobs, grain."""
    y, x = _grid(h, w)
    top, bottom = rng.uniform(60, 255, 3), rng.uniform(20, 200, 3)
    horizon = rng.uniform(0.35, 0.7)
    sky = top + (bottom - top) * (y[..., None] / horizon)
    ground_colour = rng.uniform(20, 160, 3)
    ground = ground_colour * (0.6 + 0.4 * (1 - y[..., None])) + 20 * np.sin(x[..., None] * rng.uniform(8, 30))
    picture = np.where((y < horizon)[..., None], sky, ground)
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    base = int(horizon * h)
    for _ in range(int(rng.integers(4, 10))):  # buildings / hills on the horizon
        x0 = int(rng.integers(0, w))
        bw, bh = int(rng.integers(w // 20, w // 5)), int(rng.integers(h // 12, h // 2))
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, base - bh, x0 + bw, base), fill=colour)
            for wy in range(base - bh + 6, base - 8, 14):
                for wx in range(x0 + 4, x0 + bw - 6, 12):
                    draw.rectangle((wx, wy, wx + 5, wy + 7), fill=tuple(int(c * 0.5) for c in colour))
        else:
            draw.ellipse((x0 - bw, base - bh, x0 + bw, base + bh), fill=colour)
    for _ in range(int(rng.integers(3, 8))):  # clouds, trees, people: soft blobs
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(h // 40, h // 8))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((cx - 2 * r, cy - r, cx + 2 * r, cy + r), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 600)))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _swirls(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A Starry-Night-like painting: swirling blue brush strokes, yellow stars and moon."""
    y, x = _grid(h, w)
    angle = np.arctan2(y - 0.35, x - 0.45)
    radius = np.hypot(y - 0.35, (x - 0.45) * w / h)
    strokes = np.sin(30 * radius + 3 * angle + 4 * np.sin(9 * x)) * np.cos(40 * y + 6 * np.sin(7 * x))
    blue = np.stack([20 + 40 * strokes, 60 + 50 * strokes, 140 + 70 * strokes], -1)
    yellow = np.array([230, 200, 60], np.float32)
    picture = blue
    for _ in range(11):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.02, 0.06)
        glow = np.exp(-(((x - cx) * w / h) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        picture = picture * (1 - glow) + yellow * glow
    village = (y > 0.75 + 0.05 * np.sin(12 * x))[..., None]
    picture = np.where(village, picture * 0.45, picture)
    cypress = (np.abs(x - 0.15) < 0.08 * (1 - y)) & (y > 0.2)
    picture[cypress] = picture[cypress] * 0.2 + np.array([20, 30, 15]) * 0.8
    picture += rng.normal(0, 8, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


# --- the sources --------------------------------------------------------------------------------

_NON_ASCII = ("Vedânta", "naïveté", "Ræsonnement", "Göthe", "Zoë", "rôle", "dæmon", "fête")


def _nietzsche(target: int = 60_000) -> bytes:
    """English prose as a book: paragraphs of lines wrapped at 70, a few accented words.

    The real file is ~600k characters of Project Gutenberg text with a handful of non-ASCII
    letters (ä, æ, é, ë); this one is CPython's pydoc topics with the code samples left out.
    """
    from pydoc_data.topics import topics

    rng = _rng("nietzsche.txt")
    paragraphs: list[str] = []
    size = 0
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            lines = [line for line in block.splitlines() if line.strip()]
            if not lines or any(line.startswith((" ", "\t", ">>>", "*", "-", "=")) for line in lines):
                continue  # code, tables, lists, headings' underlines
            words = " ".join(lines).split()
            if len(words) < 12:
                continue
            if rng.random() < 0.05:
                words.insert(int(rng.integers(0, len(words))), _NON_ASCII[int(rng.integers(len(_NON_ASCII)))])
            paragraph = textwrap.fill(" ".join(words), width=70)
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
            if size >= target:
                return ("PREFACE\n\n\n" + "\n\n".join(paragraphs) + "\n").encode("utf-8")
    raise AssertionError("pydoc topics hold less prose than asked for")


# Seven-segment strokes of each digit (0 and 1 are drawn as an oval and a bar).
_SEGMENTS = {
    "a": ((0, 0), (1, 0)),
    "b": ((1, 0), (1, 1)),
    "c": ((1, 1), (1, 2)),
    "d": ((0, 2), (1, 2)),
    "e": ((0, 1), (0, 2)),
    "f": ((0, 0), (0, 1)),
    "g": ((0, 1), (1, 1)),
}
_DIGITS = {2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg", 9: "gfabcd"}


def _digit(rng: np.random.Generator, label: int) -> np.ndarray:
    """A 28x28 uint8 hand-drawn-looking digit: white strokes on black, centred in a 20x20 box."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    sx, sy, slant = rng.uniform(7, 10), rng.uniform(7, 8.5), rng.uniform(-0.25, 0.1)
    x0 = 14 - sx / 2 + slant * sy + np.clip(rng.normal(0, 0.7), -1.5, 1.5)
    y0 = 14 - sy + np.clip(rng.normal(0, 0.5), -1, 1)

    def at(px: float, py: float) -> tuple[float, float]:
        jitter = np.clip(rng.normal(0, 0.5, 2), -1, 1)
        return (x0 + px * sx - slant * (py * sy) + jitter[0], y0 + py * sy + jitter[1])

    width = int(rng.integers(2, 4))
    if label == 0:
        draw.ellipse((x0 - 1, y0, x0 + sx + 1, y0 + 2 * sy), outline=255, width=width)
    elif label == 1:
        draw.line([at(0.5, 0), at(0.5, 2)], fill=255, width=width)
    else:
        for segment in _DIGITS[label]:
            start, end = _SEGMENTS[segment]
            draw.line([at(*start), at(*end)], fill=255, width=width)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius=0.5)), dtype=np.uint8)


def _mnist() -> bytes:
    """Keras' mnist.npz: np.savez_compressed of x_test, x_train, y_train, y_test (uint8).

    Written member by member (the same .npy members, deflated) with a fixed timestamp, so that
    the bytes are the same on every call; np.load sees exactly what np.savez_compressed writes.
    """
    rng = _rng("mnist.npz")

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        return np.stack([_digit(rng, int(label)) for label in labels]), labels

    x_train, y_train = split(MNIST_TRAIN)
    x_test, y_test = split(MNIST_TEST)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        arrays = {"x_test": x_test, "x_train": x_train, "y_train": y_train, "y_test": y_test}
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            body = io.BytesIO()
            np.lib.format.write_array(body, array, allow_pickle=False)
            archive.writestr(info, body.getvalue())
    return out.getvalue()


def _cifar_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A smooth 32x32x3 uint8 picture: a class-tinted gradient with a soft blob."""
    y, x = _grid(32, 32)
    hue = np.array([np.cos(label), np.cos(label + 2.1), np.cos(label + 4.2)], np.float32)
    c0 = 128 + 90 * hue + rng.normal(0, 20, 3)
    c1 = 128 - 60 * hue + rng.normal(0, 20, 3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * x + np.sin(theta) * y)[..., None]
    picture = c0 + (c1 - c0) * ramp
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.12, 0.3)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
    picture = picture * (1 - blob) + rng.uniform(0, 255, 3) * blob + rng.normal(0, 3, (32, 32, 3))
    return np.clip(picture, 0, 255).astype(np.uint8)


CIFAR_README = b"""<html>
<head><title>CIFAR-10 binary version</title></head>
<body>
<p>Stand-in of the CIFAR-10 binary version. Each of data_batch_1.bin ... data_batch_5.bin and
test_batch.bin is a sequence of 3073-byte records: one label byte (0-9), then 3072 pixel bytes,
1024 red, 1024 green, 1024 blue, each plane 32x32 in row-major order. batches.meta.txt lists
the class names, the one on line i naming label i.</p>
</body>
</html>
"""


def _cifar() -> bytes:
    """cifar-10-binary.tar.gz: cifar-10-batches-bin/ with five train batches, a test batch,
    batches.meta.txt and readme.html. Members are in the tarball's own (unsorted) order."""
    rng = _rng("cifar-10-binary.tar.gz")
    batches: dict[str, bytes] = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = []
        start = int(rng.integers(0, 10))
        for i in range(CIFAR_RECORDS):
            label = (start + i) % 10
            chw = _cifar_image(rng, label).transpose(2, 0, 1)  # R plane, G plane, B plane
            records.append(bytes([label]) + chw.tobytes())
        batches[name] = b"".join(records)
    # One class name a line; the real file is believed to end with an empty line after "truck".
    meta = ("\n".join(CIFAR_CLASSES) + "\n\n").encode("ascii")
    folder = "cifar-10-batches-bin/"
    order = ["data_batch_1.bin", "batches.meta.txt", "data_batch_3.bin", "data_batch_4.bin"]
    order += ["test_batch.bin", "readme.html", "data_batch_5.bin", "data_batch_2.bin"]
    files = {**batches, "batches.meta.txt": meta, "readme.html": CIFAR_README}
    members: list[tuple[str, bytes | None]] = [(folder, None)]
    members += [(folder + name, files[name]) for name in order]
    return _tar_gz_bytes(members)


# Names in LFW's style (First_Last, multi-part, hyphenated), not claimed to be in LFW.
LFW_PEOPLE = (
    "Aaron_Eckhart",
    "Abdel_Aziz_Al-Hakim",
    "Ai_Sugiyama",
    "George_W_Bush",
    "Jean-Pierre_Raffarin",
    "Mary_Jo_Myers",
    "Paul_McCartney",
    "Zhu_Rongji",
)


def _face(rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 face-like crop: skin oval, hair, eyes, mouth, on a background."""
    image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(20, 220, 3)))
    draw = ImageDraw.Draw(image)
    skin = tuple(int(c) for c in np.array([225, 180, 150]) * rng.uniform(0.45, 1.1))
    hair = tuple(int(c) for c in rng.integers(10, 120, 3))
    cx, cy = 32 + rng.normal(0, 1.5), 34 + rng.normal(0, 1.5)
    draw.ellipse((cx - 22, cy - 30, cx + 22, cy + 22), fill=hair)
    draw.ellipse((cx - 19, cy - 24, cx + 19, cy + 26), fill=skin)
    for side in (-1, 1):
        ex = cx + side * 8
        draw.ellipse((ex - 4, cy - 8, ex + 4, cy - 3), fill=(240, 240, 240))
        draw.ellipse((ex - 2, cy - 7, ex + 2, cy - 4), fill=(40, 30, 20))
    nose = tuple(int(c * 0.8) for c in skin)
    draw.line([(cx, cy - 3), (cx - 2, cy + 6), (cx + 1, cy + 7)], fill=nose, width=2)
    draw.arc((cx - 9, cy + 5, cx + 9, cy + 16), 20, 160, fill=(150, 60, 60), width=2)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), np.float32)
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def _lfw(faces: int) -> bytes:
    """lfwcrop_color.zip: lfwcrop_color/faces/<Name>_<NNNN>.ppm (64x64 binary PPM, P6 255) and
    lfwcrop_color/lists/<fold>_<train|test>_<same|diff>.txt (pairs of face names, no extension)."""
    rng = _rng("lfwcrop_color.zip")
    counts = dict.fromkeys(LFW_PEOPLE, 0)
    names: list[str] = []
    for i in range(faces):
        person = LFW_PEOPLE[0] if i < 3 else LFW_PEOPLE[int(rng.integers(len(LFW_PEOPLE)))]
        counts[person] += 1
        names.append(f"{person}_{counts[person]:04d}")
    root = "lfwcrop_color/"
    members: list[tuple[str, bytes | None]] = [(root, None), (root + "faces/", None)]
    for name in sorted(names):
        members.append((f"{root}faces/{name}.ppm", b"P6\n64 64\n255\n" + _face(rng).tobytes()))
    by_person: dict[str, list[str]] = {}
    for name in names:
        by_person.setdefault(name.rsplit("_", 1)[0], []).append(name)
    repeated = [sorted(v) for v in by_person.values() if len(v) > 1]
    members.append((root + "lists/", None))
    for fold in range(1, 11):
        for split in ("train", "test"):
            same, diff = [], []
            for _ in range(3):
                group = repeated[int(rng.integers(len(repeated)))]
                a, b = rng.choice(len(group), 2, replace=False)
                same.append(f"{group[a]} {group[b]}")
                a, b = rng.choice(len(names), 2, replace=False)
                if names[a].rsplit("_", 1)[0] != names[b].rsplit("_", 1)[0]:
                    diff.append(f"{names[a]} {names[b]}")
            for kind, lines in (("same", same), ("diff", diff)):
                text = "".join(line + "\n" for line in lines)
                members.append((f"{root}lists/{fold:02d}_{split}_{kind}.txt", text.encode("ascii")))
    return _zip_bytes(members)


def _jet(value: float) -> tuple[int, int, int]:
    """The jet colour map, which the CMP facade label images use for their 12 classes."""
    r = np.clip(1.5 - abs(4 * value - 3), 0, 1)
    g = np.clip(1.5 - abs(4 * value - 2), 0, 1)
    b = np.clip(1.5 - abs(4 * value - 1), 0, 1)
    return int(r * 255), int(g * 255), int(b * 255)


# CMP facade classes (1 background ... 12), coloured with jet as in the base dataset's label PNGs.
FACADE_LABELS = {
    name: _jet(i / 11)
    for i, name in enumerate(
        ("background", "facade", "window", "door", "cornice", "sill", "balcony", "blind", "deco", "molding")
        + ("pillar", "shop")
    )
}


def _facade_pair(rng: np.random.Generator) -> np.ndarray:
    """One 256x512x3 pix2pix facades example: the photo on the LEFT half, its label map on the
    RIGHT half (the pix2pix release stores A|B with A = photo, B = labels; its facades model
    trains BtoA, labels -> photo, and the TensorFlow pix2pix tutorial takes real = left half,
    input = right half)."""
    photo = Image.new("RGB", (256, 256))
    labels = Image.new("RGB", (256, 256), FACADE_LABELS["background"])
    pd, ld = ImageDraw.Draw(photo), ImageDraw.Draw(labels)
    sky = tuple(int(c) for c in rng.integers(150, 230, 3))
    wall = tuple(int(c) for c in rng.integers(90, 220, 3))
    pd.rectangle((0, 0, 256, 256), fill=sky)
    left, top = int(rng.integers(0, 20)), int(rng.integers(0, 40))
    pd.rectangle((left, top, 256 - left, 256), fill=wall)
    ld.rectangle((left, top, 256 - left, 256), fill=FACADE_LABELS["facade"])
    pd.rectangle((left, top, 256 - left, top + 8), fill=tuple(int(c * 0.8) for c in wall))
    ld.rectangle((left, top, 256 - left, top + 8), fill=FACADE_LABELS["cornice"])
    rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    cell_w, cell_h = (256 - 2 * left) / cols, (216 - top) / rows
    glass = tuple(int(c) for c in rng.integers(20, 90, 3))
    for r in range(rows):
        for c in range(cols):
            x0, y0 = left + c * cell_w + cell_w * 0.25, top + 16 + r * cell_h + cell_h * 0.2
            box = (x0, y0, x0 + cell_w * 0.5, y0 + cell_h * 0.55)
            pd.rectangle(box, fill=glass, outline=(235, 235, 235), width=2)
            ld.rectangle(box, fill=FACADE_LABELS["window"])
            sill = (box[0] - 2, box[3], box[2] + 2, box[3] + 4)
            pd.rectangle(sill, fill=(200, 200, 200))
            ld.rectangle(sill, fill=FACADE_LABELS["sill"])
    door = (112, 216, 144, 256)
    pd.rectangle(door, fill=(70, 45, 30))
    ld.rectangle(door, fill=FACADE_LABELS["door"])
    noisy = np.asarray(photo, np.float32) + rng.normal(0, 7, (256, 256, 3))
    left_half = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.concatenate([left_half, np.asarray(labels)], axis=1)


def _facades(train: int) -> bytes:
    """facades.tar.gz: facades/{train,val,test}/<n>.jpg from 1 in each split, 512x256 JPEGs."""
    rng = _rng("facades.tar.gz")
    members: list[tuple[str, bytes | None]] = [("facades/", None)]
    for split, count in (("test", 2), ("train", train), ("val", 2)):
        members.append((f"facades/{split}/", None))
        for n in rng.permutation(np.arange(1, count + 1)):  # the tarball lists them unsorted
            members.append((f"facades/{split}/{n}.jpg", _jpeg(_facade_pair(rng))))
    return _tar_gz_bytes(members)


def _animal(rng: np.random.Generator, zebra: bool, grey: bool = False) -> np.ndarray:
    """A 256x256 picture of a horse-ish (brown) or zebra-ish (striped) body on grass."""
    y, x = _grid(256, 256)
    grass = np.array([70, 130, 50], np.float32) * rng.uniform(0.7, 1.2)
    sky = np.array([150, 190, 235], np.float32) * rng.uniform(0.8, 1.05)
    horizon = rng.uniform(0.25, 0.45)
    picture = np.where((y < horizon)[..., None], sky, grass * (0.8 + 0.4 * y[..., None]))
    cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.5, 0.65)
    body = ((x - cx) / 0.3) ** 2 + ((y - cy) / 0.15) ** 2 < 1
    head = ((x - cx - 0.3) / 0.08) ** 2 + ((y - cy + 0.15) / 0.12) ** 2 < 1
    legs = (y > cy) & (y < cy + 0.3) & (np.abs(x - cx) < 0.28)
    legs &= np.abs(((x - cx + 0.25) % 0.16) - 0.08) < 0.025
    animal = body | head | legs
    if zebra:
        stripes = np.sin((x * 0.6 + y) * 70 + 3 * np.sin(x * 9)) > 0
        coat = np.where(stripes[..., None], 235.0, 25.0) * np.ones(3, np.float32)
    else:
        coat = np.array([120, 75, 40], np.float32) * rng.uniform(0.6, 1.3) * np.ones_like(picture)
    picture = np.where(animal[..., None], coat, picture) + rng.normal(0, 6, (256, 256, 3))
    pixels = np.clip(picture, 0, 255).astype(np.uint8)
    if grey:
        return np.asarray(Image.fromarray(pixels).convert("L"))
    return pixels


def _horse2zebra(train: int) -> bytes:
    """horse2zebra.zip: horse2zebra/{trainA,trainB,testA,testB}/ of 256x256 JPEGs named by their
    ImageNet synset (n02381460 horse, n02391049 zebra) and image id. The real release has a few
    greyscale JPEGs among them; one in each train folder here."""
    rng = _rng("horse2zebra.zip")
    members: list[tuple[str, bytes | None]] = [("horse2zebra/", None)]
    for folder, synset, count, zebra in (
        ("testA", "n02381460", 2, False),
        ("trainA", "n02381460", train, False),
        ("testB", "n02391049", 2, True),
        ("trainB", "n02391049", train, True),
    ):
        members.append((f"horse2zebra/{folder}/", None))
        ids = sorted(rng.choice(np.arange(2, 12000), count, replace=False))
        for i, image_id in enumerate(ids):
            grey = folder.startswith("train") and i == 1
            picture = _jpeg(_animal(rng, zebra, grey))
            members.append((f"horse2zebra/{folder}/{synset}_{image_id}.jpg", picture))
    return _zip_bytes(members)


COCO_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (427, 640), (640, 360), (612, 612))


def _coco(count: int) -> bytes:
    """train2014.zip: train2014/COCO_train2014_<12-digit id>.jpg, sparse ids, varied sizes (some
    portrait), one greyscale JPEG as the real set has a few."""
    rng = _rng("train2014.zip")
    members: list[tuple[str, bytes | None]] = [("train2014/", None)]
    image_id = 9
    for i in range(count):
        w, h = COCO_SIZES[i % len(COCO_SIZES)]
        pixels = _scene(rng, w, h)
        if i == 2:
            pixels = np.asarray(Image.fromarray(pixels).convert("L"))
        members.append((f"train2014/COCO_train2014_{image_id:012d}.jpg", _jpeg(pixels)))
        image_id += int(rng.integers(3, 40))
    return _zip_bytes(members)


def _skimage_data() -> Path:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# --- Keras weights (legacy HDF5) ----------------------------------------------------------------

# Layers Keras names itself: the real InceptionV3 files were saved by Keras 2.0, which numbered
# each kind from 1 in creation order (conv2d_1 ... conv2d_94); Keras 3 numbers from none
# (conv2d, conv2d_1, ...), continuing a session-wide counter.
_AUTO_NAMED = (
    "conv2d",
    "batch_normalization",
    "activation",
    "max_pooling2d",
    "average_pooling2d",
    "concatenate",
)
_AUTO_NAME = re.compile(r"^(" + "|".join(_AUTO_NAMED) + r")(?:_(\d+))?$")


def _keras2_names(layers) -> list[str]:
    """Keras 2.0 names of a Keras 3 model's layers: each auto-named kind renumbered from 1 by
    creation order, the input called input_1, explicitly named layers (mixed0, ...) kept."""
    by_kind: dict[str, list[int]] = {}
    for layer in layers:
        match = _AUTO_NAME.match(layer.name)
        if match:
            by_kind.setdefault(match[1], []).append(int(match[2] or 0))
    rank = {kind: {n: i + 1 for i, n in enumerate(sorted(ns))} for kind, ns in by_kind.items()}
    names = []
    for layer in layers:
        match = _AUTO_NAME.match(layer.name)
        if type(layer).__name__ == "InputLayer":
            names.append("input_1")
        elif match:
            names.append(f"{match[1]}_{rank[match[1]][int(match[2] or 0)]}")
        else:
            names.append(layer.name)
    return names


def _layer_plan(model, keras1: bool) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """[(file layer name, [(weight name, shape)])] in model order, every layer included.

    Weights are in Keras' legacy order (trainable, then non-trainable), named as the real files
    name them: Keras 1 (VGG19, 2016) `<layer>_W_1:0` / `<layer>_b_1:0`; Keras 2 (InceptionV3)
    `<layer>/kernel:0`, `<layer>/beta:0`, `<layer>/moving_mean:0`, ...
    """
    if keras1:
        names = ["input_1" if type(layer).__name__ == "InputLayer" else layer.name for layer in model.layers]
    else:
        names = _keras2_names(model.layers)
    plan = []
    for name, layer in zip(names, model.layers, strict=True):
        weights = []
        for variable in layer.trainable_weights + layer.non_trainable_weights:
            short = variable.path.rsplit("/", 1)[-1]
            if keras1:
                letter = {"kernel": "W", "bias": "b"}[short]
                weights.append((f"{name}_{letter}_1:0", tuple(variable.shape)))
            else:
                weights.append((f"{name}/{short}:0", tuple(variable.shape)))
        plan.append((name, weights))
    return plan


def _weight_values(rng: np.random.Generator, weight_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """He-normal kernels, zero biases and betas, BN moving mean 0 and variance 1 (float32)."""
    kind = weight_name.rsplit("/", 1)[-1].split(":")[0]
    if kind == "kernel" or kind.endswith("_W_1"):  # Keras 2 and Keras 1 kernel names
        fan_in = int(np.prod(shape[:-1]))
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(np.sqrt(2.0 / fan_in))
        return values
    if kind in ("moving_variance", "gamma"):
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)


def _write_weights_h5(path: Path, plan, attrs: dict[str, bytes], rng: np.random.Generator) -> None:
    """A Keras legacy weights file: file attrs layer_names (+ backend, keras_version where the
    real file has them), one group per layer with attr weight_names, datasets at those names."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in plan])
        for key, value in attrs.items():
            f.attrs[key] = np.bytes_(value)  # a fixed-length string, as h5py 2 stored bytes
        for name, weights in plan:
            group = f.create_group(name)
            if weights:
                group.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights])
            else:
                group.attrs["weight_names"] = np.asarray([])  # as Keras writes an empty list
            for weight_name, shape in weights:
                dataset = group.create_dataset(weight_name, shape, dtype="float32")
                dataset[...] = _weight_values(rng, weight_name, shape)


def write_weights(folder: Path) -> None:
    """Write the three Keras ImageNet weight files (random values) into `folder`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    vgg = keras.applications.VGG19(weights=None, include_top=False)
    # VGG19's file dates from Keras 1 (deep-learning-models v0.1, 2016): only `layer_names`.
    _write_weights_h5(folder / WEIGHT_FILES[0], _layer_plan(vgg, keras1=True), {}, _rng(WEIGHT_FILES[0]))
    del vgg
    keras2 = {"backend": b"tensorflow", "keras_version": b"2.0.2"}
    for file_name, top in ((WEIGHT_FILES[1], False), (WEIGHT_FILES[2], True)):
        model = keras.applications.InceptionV3(weights=None, include_top=top)
        _write_weights_h5(folder / file_name, _layer_plan(model, keras1=False), keras2, _rng(file_name))
        del model


# --- the mirror ---------------------------------------------------------------------------------


def make_mirror(folder: Path, *, images: int = 6) -> dict[str, str]:
    """Write one stand-in per remote source into `folder`, named by the basename of the remote
    URL's path; return {file name: sha256 hex}. Same arguments, same bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    weights = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "weights", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        writers = {
            "nietzsche.txt": _nietzsche,
            "mnist.npz": _mnist,
            "cifar-10-binary.tar.gz": _cifar,
            "lfwcrop_color.zip": functools.partial(_lfw, images * 5),
            "facades.tar.gz": functools.partial(_facades, images),
            "horse2zebra.zip": functools.partial(_horse2zebra, images),
            "train2014.zip": functools.partial(_coco, images),
            "F28w3Ac.jpg": lambda: _jpeg(_scene(_rng("F28w3Ac.jpg"), 1100, 700)),
            "9ooB60I.jpg": lambda: _jpeg(_swirls(_rng("9ooB60I.jpg"), 920, 730)),
            "aGBdQyK.jpg": lambda: _jpeg(_scene(_rng("aGBdQyK.jpg"), 1000, 660)),
        }
        for name, write in writers.items():
            (folder / name).write_bytes(write())
        data = _skimage_data()
        for name in SKIMAGE_FILES:
            shutil.copyfile(data / name, folder / name)
    finally:
        _, stderr = weights.communicate()
    if weights.returncode != 0:
        raise RuntimeError(f"writing the Keras weight files failed:\n{stderr.decode(errors='replace')}")
    names = [*writers, *SKIMAGE_FILES, *WEIGHT_FILES]
    return {name: _sha256(folder / name) for name in names}


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port, a background thread); yield the base
    URL without a trailing slash. A missing file answers 404."""

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="standins-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_MIRRORS: dict[int, tuple[Path, dict[str, str]]] = {}
_MIRRORS_LOCK = threading.Lock()


def mirror_folder(tmp_path_factory, *, images: int = 6) -> Path:
    """The session's mirror folder for `images`, built on first use and reused after."""
    with _MIRRORS_LOCK:
        cached = _MIRRORS.get(images)
        if cached is None or not cached[0].is_dir():
            folder = tmp_path_factory.mktemp(f"mirror{images}")
            cached = _MIRRORS[images] = (folder, make_mirror(folder, images=images))
        return cached[0]


def mirror_digests(folder: Path) -> dict[str, str]:
    """{file name: sha256} of a folder that mirror_folder built."""
    for built, digests in _MIRRORS.values():
        if built == Path(folder):
            return dict(digests)
    raise KeyError(f"{folder} was not built by mirror_folder")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "weights":
        write_weights(Path(sys.argv[2]))
    elif len(sys.argv) == 2:
        import time

        start = time.perf_counter()
        for file_name, digest in make_mirror(Path(sys.argv[1])).items():
            print(digest, file_name)
        print(f"{time.perf_counter() - start:.1f} s")
    else:
        sys.exit("usage: standins.py FOLDER | standins.py weights FOLDER")
