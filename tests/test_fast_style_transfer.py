"""fast_style_transfer: a fully convolutional transformation network with instance
normalisation, trained (resumably) to lower the perceptual loss; bad inputs refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_steps

from models.core.errors import GdlError
from models.core.files import digest_json
from models.core.images import save_png
from models.core.registry import StepContext, get
from models.techniques.style.fast_style_transfer import (
    TINY,
    FastStyleTransferParams,
    Stylizer,
    build_transformer,
    instance_norm,
    make_train_step,
    random_crops,
)
from models.techniques.style.perceptual import LossWeights
from models.techniques.style.style_transfer import (
    BOOK_STYLE_LAYERS,
    MOBILENET_CONTENT_LAYER,
    MOBILENET_STYLE_LAYERS,
    build_loss,
)

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("input_skip", [False, True])
def test_the_network_is_fully_convolutional(input_skip):
    net = build_transformer(base_filters=4, residual_blocks=1, input_skip=input_skip)
    for h, w in [(32, 48), (36, 20)]:
        x = RNG.uniform(0, 255, (2, h, w, 3)).astype(np.float32)
        out = net(x).numpy()
        assert out.shape == (2, h, w, 3)
        if not input_skip:
            assert out.min() >= 0 and out.max() <= 255
    # Any size at all through the stylizer (padded to a multiple of 4 and cropped back).
    odd = RNG.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    out = Stylizer(net)(odd)
    assert out.shape == (30, 41, 3) and out.dtype == np.uint8


def test_instance_norm_normalises_each_image_and_channel_on_its_own():
    x = RNG.normal(size=(3, 8, 10, 4)) * RNG.uniform(0.5, 20, (3, 1, 1, 4)) + RNG.uniform(
        -50, 50, (3, 1, 1, 4)
    )
    x = x.astype(np.float32)
    norm = instance_norm("in")
    y = norm(x).numpy()
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 2)), 1, atol=1e-2)
    # Another image in the batch does not change this one's output (no batch statistics).
    changed = x.copy()
    changed[1:] *= 100
    np.testing.assert_allclose(norm(changed).numpy()[0], y[0], atol=1e-5)


def test_random_crops_are_reproducible_per_step():
    photos = [
        RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        RNG.integers(0, 256, (45, 40, 3), dtype=np.uint8),
    ]
    a, b = random_crops(photos, 32, 3, seed=5, step=7), random_crops(photos, 32, 3, seed=5, step=7)
    assert a.shape == (3, 32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, random_crops(photos, 32, 3, seed=5, step=8))


def test_training_lowers_the_perceptual_loss():
    import keras

    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)  # its own: the outcome does not depend on which tests ran before
    style = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    loss, _ = build_loss(
        "mobilenet_v2",
        None,
        MOBILENET_CONTENT_LAYER,
        MOBILENET_STYLE_LAYERS,
        LossWeights(0.01, 1e4, 1e-3),
        style,
    )
    net = build_transformer(base_filters=4, residual_blocks=1)
    step = make_train_step(net, loss, "mobilenet_v2", keras.optimizers.Adam(2e-3))
    photos = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    fixed = random_crops(photos, 32, 2, seed=0, step=0)

    def total() -> float:
        from models.toolkit.backbones import preprocess_tensor

        target = loss.content_features(preprocess_tensor("mobilenet_v2", fixed))
        return float(loss(preprocess_tensor("mobilenet_v2", net(fixed)), target)["total"])

    before = total()
    for i in range(15):
        step(random_crops(photos, 32, 2, seed=0, step=i))
    assert total() < 0.7 * before


def _vectorized(tmp_path):
    t = get("fast_style_transfer")
    photos, proc = tmp_path / "photos", tmp_path / "proc"
    photos.mkdir()
    proc.mkdir()
    for i in range(2):
        save_png(photos / f"p{i}.png", RNG.integers(0, 256, (44, 52, 3), dtype=np.uint8))
    save_png(tmp_path / "style.png", RNG.integers(0, 256, (50, 40, 3), dtype=np.uint8))
    p = FastStyleTransferParams(**{**t.demo_overrides, **TINY, "weights_source": "none", "steps": 4})
    t.vectorize(p, StepContext({}, proc, inputs={"photos": photos, "style": tmp_path / "style.png"}))
    return t, p, proc


def test_a_resumed_training_ends_where_an_uninterrupted_one_ends(tmp_path, monkeypatch):
    monkeypatch.setattr("models.toolkit.training.PROGRESS_EVERY", 0.0)
    t, p, proc = _vectorized(tmp_path)
    p = p.model_copy(update={"checkpoint_every": 1})
    key = digest_json(p.subset("train"))

    class Killed(Exception):
        pass

    def kill(done, total, logs):
        if done == 3:  # reported before step 3 is checkpointed: killed after 2
            raise Killed

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(Killed):
        t.train(p, StepContext({"vectorize": proc}, ckpt, key=key, progress=kill, log=lambda m: None))
    logs: list[str] = []
    resumed = t.train(p, StepContext({"vectorize": proc}, ckpt, key=key, log=logs.append))
    assert any("resuming from step 2 of 4" in line for line in logs)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    straight = t.train(p, StepContext({"vectorize": proc}, fresh, key=key, log=lambda m: None))
    assert resumed["resumed_from_step"] == 2 and straight["steps"] == resumed["steps"] == 4
    a = json.loads((ckpt / "history.json").read_text())["history"]["total"]
    b = json.loads((fresh / "history.json").read_text())["history"]["total"]
    np.testing.assert_allclose(a, b, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input, through the pipeline's real steps


def _leftovers(project) -> set[str]:
    data = project / "data"
    return {
        str(p.relative_to(data))
        for p in data.rglob("*")
        if p.is_file() and not p.name.endswith(".gdl-lock") and p.relative_to(data).parts[0] != "raw"
    }


def _photos(project, kind: str):
    folder = project / f"photos-{kind.replace(' ', '-')}"
    if kind == "missing":
        return folder
    folder.mkdir()
    save_png(folder / "good.png", RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    if kind == "not an image":
        (folder / "bad.jpg").write_text("not a picture")
    elif kind == "empty":
        (folder / "bad.png").write_bytes(b"")
    elif kind == "one pixel":
        save_png(folder / "bad.png", np.zeros((1, 1, 3), np.uint8))
    elif kind == "no images":
        (folder / "good.png").unlink()
        (folder / "notes.txt").write_text("hello")
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("not an image", "is not an image"),
        ("empty", "is an empty file"),
        ("one pixel", "is 1x1 pixels"),
        ("no images", "holds no images"),
    ],
)
def test_bad_content_photos_fail_in_one_line_and_leave_nothing(project, kind, message):
    with pytest.raises(GdlError) as err:
        run_steps("fast_style_transfer", content_source=str(_photos(project, kind)))
    assert "\n" not in str(err.value) and message in str(err.value)
    assert _leftovers(project) == set()


def test_a_photo_over_max_pixels_fails_in_one_line_and_leaves_nothing(project):
    with pytest.raises(GdlError) as err:
        run_steps("fast_style_transfer", content_source=str(_photos(project, "good")), max_pixels=2000)
    assert "content photo good.png has 2304 pixels, over the limit of 2000 (max_pixels)" in str(err.value)
    assert _leftovers(project) == set()


def test_an_unknown_layer_and_mismatched_weights_are_refused(project):
    with pytest.raises(GdlError, match="unknown layer 'relu2_2' for mobilenet_v2"):
        run_steps("fast_style_transfer", content_layer="relu2_2")
    with pytest.raises(GdlError) as err:
        run_steps(
            "fast_style_transfer",
            backbone="vgg19",
            weights_source=str(_torch_weights()),
            content_layer="block5_conv2",
            style_layers=BOOK_STYLE_LAYERS,
        )
    assert "torch checkpoints are read for mobilenet_v2 only, not vgg19" in str(err.value)
    assert {p.split("/")[0] for p in _leftovers(project)} <= {"processed"}


def _torch_weights():
    from conftest import offline_mobilenet_v2_path

    return offline_mobilenet_v2_path()
