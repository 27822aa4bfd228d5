"""deepdream: real ImageNet features, octave arithmetic, early stop, resume, one trace, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_steps, steps_in_own_project

import models.techniques.deepdream as dd
from models.core.errors import GdlError
from models.core.images import load_image, png_bytes

ROOT_MARKER = ".step.json"


def _train_dir(project, done) -> object:
    return project / done["upstream"]["train"]["dir"]


def _history(project, done) -> dict:
    return json.loads((_train_dir(project, done) / dd.HISTORY).read_text())


@pytest.fixture(scope="module")
def dreamed(tmp_path_factory):
    """The tiny demo dream (offline ImageNet MobileNetV2 on Chelsea), run once for the module."""
    return steps_in_own_project(tmp_path_factory, "deepdream")


def test_demo_dream_climbs_real_imagenet_features_and_changes_the_photo(dreamed):
    root, done = dreamed
    history = _history(root, done)
    assert "ImageNet MobileNetV2" in history["weights"]
    for octave in history["octaves"]:
        assert octave["loss"][-1] > octave["loss"][0], "gradient ascent raises the loss"
    photo = np.load(root / done["upstream"]["vectorize"]["dir"] / dd.IMAGE).astype(float)
    dream = load_image(root / done["upstream"]["sample"]["dir"] / dd.DREAM).astype(float)
    assert dream.shape == photo.shape
    assert np.abs(dream - photo).mean() > 1.0
    assert done["upstream"]["train"]["summary"]["traces"] == 1, "one trace for every octave size"


def test_octave_shapes_follow_octave_scale(dreamed):
    assert dd.octave_shapes((300, 451), 3, 1.4) == [(153, 230), (214, 322), (300, 451)]
    root, done = dreamed
    p = done["params"]
    history = _history(root, done)
    height, width = done["upstream"]["vectorize"]["summary"].values()
    shapes = [(o["height"], o["width"]) for o in history["octaves"]]
    expected = [
        (int(height / p["octave_scale"] ** i), int(width / p["octave_scale"] ** i))
        for i in reversed(range(p["num_octave"]))
    ]
    assert shapes == expected


def test_detail_reinjection_adds_back_exactly_what_shrinking_lost():
    rng = np.random.default_rng(0)
    original = rng.normal(size=(40, 56, 3)).astype(np.float32) * 50
    shapes = dd.octave_shapes(original.shape, 3, 1.4)
    seen = []

    def nothing(k, image):
        seen.append(image.shape[:2])
        return image

    # Doing nothing at every octave must give the original back: the details re-injected after
    # each upscale are exactly those lost by shrinking it.
    np.testing.assert_allclose(dd.run_octaves(original, shapes, nothing), original, atol=1e-3)
    assert seen == shapes and seen[0] < seen[-1], "smallest octave first"

    # Independent computation, octave by octave: what each ascent adds survives to the end.
    def add_one(k, image):
        return image + 1.0

    s0, s1, s2 = shapes
    small = dd.resize_float(original, s0)
    expected = small + 1.0  # octave 1: ascent, no detail lost yet
    expected = dd.resize_float(expected, s1) + 1.0
    expected += dd.resize_float(original, s1) - dd.resize_float(small, s1)
    mid = dd.resize_float(original, s1)
    expected = dd.resize_float(expected, s2) + 1.0
    expected += original - dd.resize_float(mid, s2)
    result = dd.run_octaves(original, shapes, add_one)
    np.testing.assert_allclose(result, expected, atol=1e-3)
    np.testing.assert_allclose(result, original + 3.0, atol=1e-2)


def test_max_loss_stops_each_octave_before_the_step_that_passes_it(project):
    done = run_steps("deepdream", max_loss=1e-6)
    history = _history(project, done)
    assert [o["steps"] for o in history["octaves"]] == [1, 1]
    assert all(o["stopped_early"] for o in history["octaves"])
    # The step that would have exceeded max_loss is not applied: the dream is the photo.
    photo = np.load(project / done["upstream"]["vectorize"]["dir"] / dd.IMAGE).astype(int)
    dream = load_image(project / done["upstream"]["sample"]["dir"] / dd.DREAM).astype(int)
    assert np.abs(dream - photo).max() <= 1


def test_a_killed_dream_resumes_in_its_octave_and_matches_an_uninterrupted_one(dreamed, project, monkeypatch):
    real = dd.make_ascent_step
    calls = {"n": 0, "kill_at": 6}  # octave 1: calls 1-3; octave 2: checkpoint after 2, killed at 3

    def counting(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(image):
            calls["n"] += 1
            if calls["n"] == calls["kill_at"]:
                raise KeyboardInterrupt("killed")
            return step(image)

        wrapped.experimental_get_tracing_count = step.experimental_get_tracing_count
        return wrapped

    monkeypatch.setattr(dd, "make_ascent_step", counting)
    with pytest.raises(KeyboardInterrupt):
        run_steps("deepdream")
    assert not list(project.glob("data/checkpoints/deepdream/*/.step.json")), "no marker for a killed run"
    calls.update(n=0, kill_at=-1)
    resumed = run_steps("deepdream")
    assert calls["n"] == 1, "only the last step of octave 2 runs again"
    root, uninterrupted = dreamed
    a = load_image(project / resumed["upstream"]["sample"]["dir"] / dd.DREAM)
    b = load_image(root / uninterrupted["upstream"]["sample"]["dir"] / dd.DREAM)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert _history(project, resumed)["final_loss"] == pytest.approx(
        _history(root, uninterrupted)["final_loss"]
    )


def test_the_compiled_step_is_traced_once_for_every_octave_size():
    from models.toolkit.backbones import feature_model, load_backbone

    backbone, _ = load_backbone("mobilenet_v2", None)
    layers = {"block_5": 1.0, "block_9": 2.0}
    step = dd.make_ascent_step(feature_model(backbone, list(layers)), layers, 2, 0.01)
    for h, w in dd.octave_shapes((64, 90), 3, 1.4):
        loss, moved = step(np.zeros((1, h, w, 3), np.float32) + 0.1)
        assert moved.shape == (1, h, w, 3) and np.isfinite(float(loss))
    assert step.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line each, nothing written


def _no_outputs(project):
    markers = list(project.glob("data/*/deepdream/*/.step.json"))
    assert not markers and not list(project.rglob(dd.DREAM)) and not list(project.rglob(dd.IMAGE))


def _one_line_error(match: str, **overrides) -> str:
    with pytest.raises(GdlError, match=match) as err:
        run_steps("deepdream", **overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_missing_image_path_fails_in_one_line(project):
    _one_line_error("does not exist", image_source=str(project / "nope.png"))
    _no_outputs(project)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"just some text, not a picture\n" * 5, "is not an image"),
        (b"", "empty"),
        (png_bytes(np.zeros((1, 1, 3), np.uint8)), "at least 2x2"),
    ],
    ids=["not-an-image", "zero-size", "one-pixel"],
)
def test_an_unusable_image_file_fails_in_one_line(project, content, match):
    path = project / "photo.png"
    path.write_bytes(content)
    _one_line_error(match, image_source=str(path))
    _no_outputs(project)


def test_an_image_too_small_for_its_octaves_fails_in_one_line(project):
    path = project / "small.png"
    path.write_bytes(png_bytes(np.full((20, 30, 3), 128, np.uint8)))
    message = _one_line_error("smallest octave", image_source=str(path))
    assert "num_octave" in message
    _no_outputs(project)


def test_an_image_over_max_pixels_fails_before_decoding(project):
    _one_line_error(r"over the limit of 1000 \(max_pixels\)", max_pixels=1000)
    _no_outputs(project)


def test_an_unknown_layer_is_rejected_up_front_with_the_valid_ones(project):
    message = _one_line_error("layers", layers={"block_5": 1.0, "mixed3": 2.0})
    assert "'mixed3'" in message and "block_12" in message
    assert not (project / "data").exists(), "rejected before anything ran"
    # The book's layers are known to InceptionV3 without building it; a typo there is not.
    assert dd.DeepDreamParams().layers == dd.BOOK_LAYERS
    with pytest.raises(ValueError, match="layers: unknown layer 'block_5' for vgg19"):
        dd.DeepDreamParams(backbone="vgg19", layers={"block_5": 1.0})
    with pytest.raises(ValueError, match=r"layers\.mixed3\n.*finite number"):
        dd.DeepDreamParams(layers={"mixed3": float("nan")})


def test_weights_of_another_model_are_refused_before_the_dream_starts(project):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    path = project / "other.weights.h5"
    other.save_weights(path)
    _one_line_error("do not fit the mobilenet_v2 backbone", weights_source=str(path))
    train_slots = [p for p in project.glob("data/checkpoints/deepdream/*") if p.is_dir()]
    assert all(not any(p.iterdir()) for p in train_slots), "nothing half-written"
    assert not list(project.rglob(dd.DREAM))
