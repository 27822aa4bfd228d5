"""The loopback mirror (tests/standins.py): every catalog source, in its real layout, over HTTP."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image
from standins import (
    CIFAR_CLASSES,
    CIFAR_RECORDS,
    SKIMAGE_FILES,
    WEIGHT_FILES,
    mirror_digests,
    mirror_folder,
    serve,
)

REPO = Path(__file__).resolve().parent.parent
IMAGES = 6
NOT_MIRRORED = {"mobilenet_v2-b0353104.pth"}  # torchvision's checkpoint: no stand-in on purpose


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return mirror_folder(tmp_path_factory, images=IMAGES)


def _catalog() -> dict:
    return yaml.safe_load((REPO / "models" / "inputs" / "catalog.yaml").read_text())


def _remote_files() -> dict[str, dict]:
    """{basename of the remote URL's path: catalog entry} for every HTTP(S) remote."""
    files = {}
    for entry in _catalog().values():
        remote = entry.get("remote") or ""
        if remote.startswith(("http://", "https://")):
            files[Path(urllib.parse.urlparse(remote).path).name] = entry
    return files


def test_every_remote_source_has_a_stand_in_with_its_digest(mirror, tmp_path_factory):
    digests = mirror_digests(mirror)
    expected = set(_remote_files()) - NOT_MIRRORED
    assert expected <= set(digests), f"no stand-in for {sorted(expected - set(digests))}"
    assert {p.name for p in mirror.iterdir()} == set(digests)
    for name, digest in digests.items():
        assert hashlib.sha256((mirror / name).read_bytes()).hexdigest() == digest, name
    assert mirror_folder(tmp_path_factory, images=IMAGES) == mirror  # built once per session


def test_scikit_image_files_are_the_published_ones(mirror):
    remote = _remote_files()
    for name in SKIMAGE_FILES:
        assert mirror_digests(mirror)[name] == remote[name]["sha256"], name


def test_nietzsche_is_book_like_utf8_prose(mirror):
    text = (mirror / "nietzsche.txt").read_bytes().decode("utf-8")
    assert 55_000 <= len(text) <= 70_000
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "" in lines  # wrapped lines, paragraphs
    assert any(ord(c) > 127 for c in text)


def test_mnist_npz_has_keras_keys_dtypes_and_shapes(mirror):
    path = mirror / "mnist.npz"
    with zipfile.ZipFile(path) as archive:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())  # savez_compressed
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["x_test", "x_train", "y_test", "y_train"]
        shapes = {"x_train": (600, 28, 28), "y_train": (600,), "x_test": (100, 28, 28), "y_test": (100,)}
        for key, shape in shapes.items():
            assert data[key].dtype == np.uint8 and data[key].shape == shape, key
        for key in ("y_train", "y_test"):
            assert set(data[key].tolist()) == set(range(10))
        x = data["x_train"]
        assert x.max() == 255 and 0.05 < (x > 128).mean() < 0.4  # strokes on black, not noise
        assert (x[:, :2, :] == 0).mean() > 0.99  # empty border, as MNIST's 20x20 box in 28x28
        assert (x[:, :, :2] == 0).mean() > 0.99 and (x[:, -2:, :] == 0).mean() > 0.99


def test_cifar_binary_layout(mirror):
    with tarfile.open(mirror / "cifar-10-binary.tar.gz", "r:gz") as archive:
        names = set(archive.getnames())
        batches = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        wanted = {"batches.meta.txt", "readme.html", *batches}
        assert names == {"cifar-10-batches-bin"} | {f"cifar-10-batches-bin/{n}" for n in wanted}
        meta = archive.extractfile("cifar-10-batches-bin/batches.meta.txt").read().decode("ascii")
        assert [line for line in meta.splitlines() if line.strip()] == list(CIFAR_CLASSES)
        for name in batches:
            data = archive.extractfile(f"cifar-10-batches-bin/{name}").read()
            assert len(data) == CIFAR_RECORDS * 3073, name
            records = np.frombuffer(data, np.uint8).reshape(CIFAR_RECORDS, 3073)
            assert set(records[:, 0].tolist()) == set(range(10)), name  # frogs (6) too
            planes = records[:, 1:].reshape(-1, 3, 32, 32).astype(int)
            # smooth pictures: neighbouring pixels of a row differ little in each colour plane
            assert np.abs(np.diff(planes, axis=3)).mean() < 12


def test_lfwcrop_members_and_ppm_headers(mirror):
    with zipfile.ZipFile(mirror / "lfwcrop_color.zip") as archive:
        names = archive.namelist()
        faces = [n for n in names if n.startswith("lfwcrop_color/faces/") and n.endswith(".ppm")]
        assert len(faces) == IMAGES * 5
        assert "lfwcrop_color/faces/Aaron_Eckhart_0001.ppm" in faces
        assert "lfwcrop_color/lists/01_train_same.txt" in names
        assert "lfwcrop_color/lists/10_test_diff.txt" in names
        for name in faces:
            stem = Path(name).stem
            assert stem.rsplit("_", 1)[1].isdigit() and len(stem.rsplit("_", 1)[1]) == 4
            data = archive.read(name)
            assert data.startswith(b"P6\n64 64\n255\n") and len(data) == 13 + 64 * 64 * 3
            assert Image.open(io.BytesIO(data)).size == (64, 64)
        stems = {Path(n).stem for n in faces}
        pairs = archive.read("lfwcrop_color/lists/01_train_same.txt").decode().split()
        assert pairs and set(pairs) <= stems


def test_facades_are_photo_left_labels_right(mirror):
    with tarfile.open(mirror / "facades.tar.gz", "r:gz") as archive:
        jpgs = [n for n in archive.getnames() if n.endswith(".jpg")]
        for split, count in (("train", IMAGES), ("val", 2), ("test", 2)):
            assert sorted(n for n in jpgs if n.startswith(f"facades/{split}/")) == sorted(
                f"facades/{split}/{i}.jpg" for i in range(1, count + 1)
            )
        image = Image.open(archive.extractfile("facades/train/1.jpg"))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (512, 256)
        pixels = np.asarray(image).astype(int)
        # the label map (right) is flat colour, the photo (left) is textured
        assert (
            np.abs(np.diff(pixels[:, 256:], axis=1)).mean() < np.abs(np.diff(pixels[:, :256], axis=1)).mean()
        )


def test_horse2zebra_layout(mirror):
    with zipfile.ZipFile(mirror / "horse2zebra.zip") as archive:
        jpgs = [n for n in archive.namelist() if n.endswith(".jpg")]
        for folder, synset, count in (
            ("trainA", "n02381460", IMAGES),
            ("trainB", "n02391049", IMAGES),
            ("testA", "n02381460", 2),
            ("testB", "n02391049", 2),
        ):
            mine = [n for n in jpgs if n.startswith(f"horse2zebra/{folder}/")]
            assert len(mine) == count and all(Path(n).name.startswith(f"{synset}_") for n in mine)
        modes = set()
        for name in jpgs:
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.format == "JPEG" and image.size == (256, 256)
            modes.add(image.mode)
        assert modes == {"RGB", "L"}  # the real release has a few greyscale pictures


def test_coco_layout(mirror):
    with zipfile.ZipFile(mirror / "train2014.zip") as archive:
        jpgs = [n for n in archive.namelist() if n.endswith(".jpg")]
        assert len(jpgs) == IMAGES
        sizes, modes = set(), set()
        for name in jpgs:
            stem = Path(name).stem
            assert name.startswith("train2014/COCO_train2014_") and len(stem.rsplit("_", 1)[1]) == 12
            image = Image.open(io.BytesIO(archive.read(name)))
            sizes.add(image.size)
            modes.add(image.mode)
        assert "train2014/COCO_train2014_000000000009.jpg" in jpgs
        assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)
        assert modes == {"RGB", "L"}


@pytest.mark.parametrize(
    ("name", "size"),
    [("F28w3Ac.jpg", (1100, 700)), ("9ooB60I.jpg", (920, 730)), ("aGBdQyK.jpg", (1000, 660))],
)
def test_keras_io_photos(mirror, name, size):
    image = Image.open(mirror / name)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == size
    assert np.asarray(image).std() > 20


def test_vgg19_file_has_the_keras1_layout(mirror):
    with h5py.File(mirror / WEIGHT_FILES[0], "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names[0] == "input_1" and names[-1] == "block5_pool" and len(names) == 22
        assert "keras_version" not in f.attrs  # saved by Keras 1
        group = f["block1_conv1"]
        assert [n.decode() for n in group.attrs["weight_names"]] == [
            "block1_conv1_W_1:0",
            "block1_conv1_b_1:0",
        ]
        assert group["block1_conv1_W_1:0"].shape == (3, 3, 3, 64)
        assert group["block1_conv1_W_1:0"].dtype == np.float32
        assert len(f["block1_pool"].attrs["weight_names"]) == 0


@pytest.mark.parametrize("top", [False, True])
def test_inception_v3_file_has_the_keras2_layout(mirror, top):
    with h5py.File(mirror / WEIGHT_FILES[2 if top else 1], "r") as f:
        assert f.attrs["backend"] == b"tensorflow" and f.attrs["keras_version"].startswith(b"2.")
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names[0] == "input_1"
        assert {f"conv2d_{i}" for i in range(1, 95)} <= set(names) and "conv2d_95" not in names
        assert {f"batch_normalization_{i}" for i in range(1, 95)} <= set(names)
        assert {f"mixed{i}" for i in range(11)} | {"mixed9_0", "mixed9_1"} <= set(names)
        assert names[-1] == ("predictions" if top else "mixed10")
        assert f["conv2d_1"]["conv2d_1"]["kernel:0"].shape == (3, 3, 3, 32)
        bn = [n.decode() for n in f["batch_normalization_1"].attrs["weight_names"]]
        assert bn == [f"batch_normalization_1/{w}:0" for w in ("beta", "moving_mean", "moving_variance")]
        if top:
            assert f["predictions"]["predictions"]["kernel:0"].shape == (2048, 1000)


def test_serve_gives_the_bytes_and_404(mirror):
    with serve(mirror) as base:
        assert base.startswith("http://127.0.0.1:") and not base.endswith("/")
        with urllib.request.urlopen(f"{base}/mnist.npz", timeout=10) as response:
            assert response.read() == (mirror / "mnist.npz").read_bytes()
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{base}/no-such-file.zip", timeout=10)
        assert error.value.code == 404


def _load_checked(model, path: Path) -> None:
    """Load `path` into `model`: no warning about skipped or mismatched weights, and every
    weight equal to the file's dataset, taken in the file's layer order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(str(path))
    noisy = [str(w.message) for w in caught if any(k in str(w.message).lower() for k in ("skip", "mismatch"))]
    assert not noisy
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        stored = []
        for name in names:
            for weight_name in f[name].attrs["weight_names"]:
                stored.append(f[name][weight_name.decode()][()])
    loaded = [
        np.asarray(v) for layer in model.layers for v in layer.trainable_weights + layer.non_trainable_weights
    ]
    assert len(loaded) == len(stored)
    for got, want in zip(loaded, stored, strict=True):
        np.testing.assert_array_equal(got, want)


def test_weights_load_into_keras_applications(mirror):
    import keras

    _load_checked(keras.applications.VGG19(weights=None, include_top=False), mirror / WEIGHT_FILES[0])
    _load_checked(keras.applications.InceptionV3(weights=None, include_top=False), mirror / WEIGHT_FILES[1])
    model = keras.applications.InceptionV3(weights=None, include_top=True)
    _load_checked(model, mirror / WEIGHT_FILES[2])
    picture = np.random.default_rng(0).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    scores = np.asarray(model(picture, training=False))
    assert np.isfinite(scores).all() and scores.shape == (1, 1000)
