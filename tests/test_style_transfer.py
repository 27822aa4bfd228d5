"""style_transfer: the book's losses, one fused loss+gradient for L-BFGS, resumable optimisation,
and bad inputs refused in one line with nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_steps

from models.core.errors import GdlError
from models.core.files import digest_json
from models.core.images import save_png
from models.core.registry import StepContext, get
from models.techniques.style.perceptual import (
    LossWeights,
    content_loss,
    gram_matrix,
    style_loss,
    total_variation_loss,
)
from models.techniques.style.style_transfer import (
    MOBILENET_CONTENT_LAYER,
    MOBILENET_STYLE_LAYERS,
    TINY,
    Objective,
    StyleTransferParams,
    build_loss,
    make_step,
)
from models.toolkit.backbones import preprocess_tensor

RNG = np.random.default_rng(0)
CONTENT = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
STYLE = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
WEIGHTS = LossWeights(content=0.5, style=3.0, total_variation=1e-2)


def test_gram_matrix_and_losses_match_an_independent_numpy_computation():
    a = RNG.normal(size=(2, 5, 6, 4)).astype(np.float32)
    b = RNG.normal(size=(2, 5, 6, 4)).astype(np.float32)
    gram = np.einsum("bhwc,bhwd->bcd", a.astype(np.float64), a.astype(np.float64))
    np.testing.assert_allclose(gram_matrix(a).numpy(), gram, rtol=1e-5)

    expected_content = np.mean([np.sum((a[i] - b[i]) ** 2) for i in range(2)])
    assert float(content_loss(b, a)) == pytest.approx(expected_content, rel=1e-5)

    # The book: sum((S - C)^2) / (4 * 3^2 * (height * width)^2), image size not feature size.
    height, width = 40, 48
    target = np.einsum("hwc,hwd->cd", b[0], b[0])
    scaled = [np.sum((target - gram[i]) ** 2) / (4 * 9 * (height * width) ** 2) for i in range(2)]
    assert float(style_loss(target, a, height, width)) == pytest.approx(np.mean(scaled), rel=1e-5)

    x = a.astype(np.float64)
    down = (x[:, :-1, :-1] - x[:, 1:, :-1]) ** 2
    right = (x[:, :-1, :-1] - x[:, :-1, 1:]) ** 2
    tv = np.mean([np.sum((down[i] + right[i]) ** 1.25) for i in range(2)])
    assert float(total_variation_loss(a)) == pytest.approx(tv, rel=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "vgg19"])
def test_the_compiled_preprocessing_is_the_numpy_one(backbone):
    from models.toolkit.backbones import preprocess

    images = RNG.uniform(0, 255, (2, 3, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        preprocess_tensor(backbone, images).numpy(), preprocess(backbone, images), atol=1e-4
    )


@pytest.fixture(scope="module")
def objective():
    import keras

    from models.toolkit.backbones import preprocess

    keras.utils.set_random_seed(3)
    loss, _ = build_loss(
        "mobilenet_v2", None, MOBILENET_CONTENT_LAYER, MOBILENET_STYLE_LAYERS, WEIGHTS, STYLE
    )
    return Objective(loss, preprocess("mobilenet_v2", CONTENT))


def test_the_fused_loss_and_gradient_equal_separate_calls_and_a_gradient_tape(objective):
    import tensorflow as tf

    x = RNG.normal(size=objective.size)
    total, grad, parts = objective.loss_and_grad(x)
    assert float(total) == pytest.approx(float(objective.loss_only(x)), rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), objective.grad_only(x).numpy(), rtol=1e-5, atol=1e-9)
    assert grad.dtype == tf.float64 and grad.shape == (objective.size,)

    image = tf.Variable(x.reshape(objective.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        eager = objective.loss(image, objective.content_target)
    taped = tape.gradient(eager["total"], image).numpy().ravel()
    assert float(total) == pytest.approx(float(eager["total"]), rel=1e-5)
    np.testing.assert_allclose(grad.numpy(), taped, rtol=1e-4, atol=1e-6 * np.abs(taped).max())
    w = WEIGHTS
    weighted = w.content * parts["content"] + w.style * parts["style"] + w.total_variation * parts["tv"]
    assert float(total) == pytest.approx(float(weighted), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_each_optimiser_lowers_the_total_loss(objective, optimizer):
    import keras

    from models.techniques.style.style_transfer import adam_optimizer
    from models.toolkit.backbones import preprocess

    start = preprocess("mobilenet_v2", CONTENT)[None]
    image = keras.Variable(start)
    adam = adam_optimizer("mobilenet_v2", 2.0) if optimizer == "adam" else None
    if adam:
        adam.build([image])
    step = make_step(objective, image, optimizer, 10, adam)
    initial = objective.parts(start)["total"]
    first, second = step(0), step(1)
    assert second["total"] < first["total"] < initial
    assert second["total"] == pytest.approx(objective.parts(image.numpy())["total"], rel=1e-5)
    if optimizer == "lbfgs":
        assert 10 <= first["evaluations"] <= 15  # the book's maxfun, finishing its line search


def _vectorized(tmp_path):
    t = get("style_transfer")
    raw, proc = tmp_path / "raw", tmp_path / "proc"
    raw.mkdir()
    proc.mkdir()
    save_png(raw / "c.png", CONTENT)
    save_png(raw / "s.png", STYLE)
    p = StyleTransferParams(**{**t.demo_overrides, **TINY, "weights_source": "none", "iterations": 4})
    t.vectorize(p, StepContext({}, proc, inputs={"content": raw / "c.png", "style": raw / "s.png"}))
    return t, p, proc


def test_a_resumed_optimisation_ends_where_an_uninterrupted_one_ends(tmp_path, monkeypatch):
    monkeypatch.setattr("models.toolkit.training.PROGRESS_EVERY", 0.0)  # progress after every iteration
    t, p, proc = _vectorized(tmp_path)
    p = p.model_copy(update={"checkpoint_every": 1})
    key = digest_json(p.subset("train"))

    class Killed(Exception):
        pass

    def kill_after_two(done, total, logs):
        if done == 3:  # reported before iteration 3 is checkpointed: the run is killed after 2
            raise Killed

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(Killed):
        t.train(
            p, StepContext({"vectorize": proc}, ckpt, key=key, progress=kill_after_two, log=lambda m: None)
        )
    logs: list[str] = []
    resumed = t.train(p, StepContext({"vectorize": proc}, ckpt, key=key, log=logs.append))
    assert any("resuming from iteration 2 of 4" in line for line in logs)
    assert resumed["resumed_from_iteration"] == 2 and resumed["iterations"] == 4

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    straight = t.train(p, StepContext({"vectorize": proc}, fresh, key=key, log=lambda m: None))
    assert straight["total_loss"] == pytest.approx(resumed["total_loss"], rel=1e-4)
    assert sorted(f.name for f in (ckpt / "frames").iterdir()) == [f"frame-{i:04d}.png" for i in range(1, 5)]


# ---------------------------------------------------------------------------------------------
# Bad input, through the pipeline's real steps


def _leftovers(project) -> set[str]:
    """Files the failed run left outside the (complete) downloads, lock files aside."""
    data = project / "data"
    return {
        str(p.relative_to(data))
        for p in data.rglob("*")
        if p.is_file() and not p.name.endswith(".gdl-lock") and p.relative_to(data).parts[0] != "raw"
    }


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _bad_image(project, kind: str):
    path = project / f"bad-{kind}.png"
    if kind == "missing":
        return path
    if kind == "not an image":
        path.write_text("hello, I am text\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "one pixel":
        save_png(path, np.zeros((1, 1, 3), np.uint8))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("not an image", "is not an image"),
        ("empty", "is an empty file"),
        ("one pixel", "is 1x1 pixels; at least 2x2 is needed"),
    ],
)
@pytest.mark.parametrize("which", ["content", "style"])
def test_a_bad_image_fails_in_one_line_and_leaves_nothing(project, kind, message, which):
    with pytest.raises(GdlError) as err:
        run_steps("style_transfer", **{f"{which}_source": str(_bad_image(project, kind))})
    assert message in _one_line(err)
    assert _leftovers(project) == set()


def test_an_image_over_max_pixels_fails_in_one_line_and_leaves_nothing(project):
    big = project / "big.png"
    save_png(big, np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(GdlError) as err:
        run_steps("style_transfer", content_source=str(big), max_pixels=1999)
    assert "has 2000 pixels, over the limit of 1999 (max_pixels)" in _one_line(err)
    assert _leftovers(project) == set()


def test_an_unknown_layer_is_refused_before_any_work(project):
    with pytest.raises(GdlError) as err:
        run_steps("style_transfer", style_layers=["stem_relu", "block5_conv1"])
    message = _one_line(err)
    assert "unknown layer 'block5_conv1' for mobilenet_v2" in message and "valid: stem_relu" in message
    assert not (project / "data").exists() or _leftovers(project) == set()


def test_weights_of_another_architecture_fail_in_one_line_and_leave_nothing(project):
    import keras

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="dense_other")])
    weights = project / "other.weights.h5"
    other.save_weights(weights)
    with pytest.raises(GdlError) as err:
        run_steps("style_transfer", weights_source=str(weights))
    assert "do not fit the mobilenet_v2 backbone" in _one_line(err)
    # Download and vectorize are complete, valid steps; the train slot holds nothing.
    assert {p.split("/")[0] for p in _leftovers(project)} <= {"processed"}
