"""adversarial: the targeted attack fools the real ImageNet MobileNetV2 within its bound, the saved
PNG stays within it too, the FGSM/PGD sweep keeps what it promises, and bad inputs fail in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import offline_mobilenet_v2_path, run_steps

from models.core.errors import GdlError
from models.core.images import load_image, save_png
from models.core.registry import StepContext, get
from models.inputs.offline import packaged_file
from models.techniques.adversarial import (
    ATTACKED,
    DEMO,
    PNG,
    RESULT,
    TINY,
    AdversarialParams,
    allowed_levels,
    load_classifier,
    quantize,
    to_levels,
)
from models.toolkit.attacks import sweep
from models.toolkit.backbones import eval_crop, input_step, preprocess

ELEPHANT = 386
CATS = range(281, 286)


def chelsea_path():
    return packaged_file("skimage", "data/chelsea.png")


def params(**kw) -> AdversarialParams:
    return AdversarialParams(**{**DEMO, **kw})


def attack(tmp_path, p: AdversarialParams, key: str = "test", train_dir=None):
    """vectorize + train of the real technique on chelsea (offline photo and weights)."""
    photos = tmp_path / "photos"
    if not photos.exists():
        photos.mkdir()
        shutil.copyfile(chelsea_path(), photos / "chelsea.png")
    inputs = {"photo": chelsea_path(), "photos": photos, "weights": offline_mobilenet_v2_path()}
    processed = tmp_path / "processed"
    if not processed.exists():
        processed.mkdir()
        get("adversarial").vectorize(p, StepContext({}, processed, inputs))
    out = train_dir or tmp_path / "train"
    out.mkdir(exist_ok=True)
    summary = get("adversarial").train(
        p, StepContext({"vectorize": processed}, out, inputs, key=key, log=lambda m: None)
    )
    return summary, processed, out


@pytest.fixture(scope="module")
def chelsea_attack(tmp_path_factory):
    """The demo's attack on the real 224-pixel eval crop, a few steps at most."""
    p = params(max_steps=15)
    summary, processed, out = attack(tmp_path_factory.mktemp("chelsea"), p)
    return p, summary, processed, out


def test_targeted_attack_on_chelsea_raises_p_target_and_flips_top1_within_epsilon(chelsea_attack):
    p, summary, processed, out = chelsea_attack
    result = json.loads((out / RESULT).read_text())
    assert result["top5_clean"][0]["class"] in CATS  # the real ImageNet features see the cat
    assert result["p_target_clean"] < 1e-6
    assert summary["success"] and summary["p_target"] >= p.threshold
    assert result["top5_attacked"][0]["class"] == ELEPHANT
    assert 1 <= summary["steps"] < p.max_steps
    original = preprocess(p.backbone, np.load(processed / "photo.npy"))
    attacked = np.load(out / ATTACKED)
    assert np.abs(attacked - original).max() <= p.epsilon + 1e-6
    assert result["p_target"] == summary["p_target"] and result["history"]["p_target"][0] < 1e-6


def test_saved_png_is_within_epsilon_after_8_bit_quantisation(chelsea_attack):
    p, summary, processed, out = chelsea_attack
    photo = np.load(processed / "photo.npy")
    png = load_image(out / PNG)
    k = allowed_levels(p.backbone, p.epsilon)
    assert (k == 1).all()  # the demo's epsilon is the book's 1.3 grey levels: one whole level
    change = np.abs(png.astype(int) - photo.astype(int))
    assert (change <= k).all() and change.max() == 1  # the attack did change pixels, by one level
    in_input_space = np.abs(preprocess(p.backbone, png) - preprocess(p.backbone, photo))
    assert in_input_space.max() <= p.epsilon
    # What the saved file does to the network is measured and recorded either way.
    model, _ = load_classifier(p, offline_mobilenet_v2_path(), photo.shape[0])
    probs = np.asarray(model(preprocess(p.backbone, png)[None], training=False))[0]
    result = json.loads((out / RESULT).read_text())
    assert result["png_p_target"] == pytest.approx(float(probs[ELEPHANT]), rel=1e-4)
    assert result["png_success"] == bool(probs[ELEPHANT] >= p.threshold)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "inception_v3"])
@pytest.mark.parametrize("levels", [0.4, 1.0, 1.275, 2.5])
def test_quantised_image_never_leaves_the_epsilon_ball(backbone, levels):
    rng = np.random.default_rng(0)
    step = input_step(backbone)
    epsilon = float(levels * step.min())
    original = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x0 = preprocess(backbone, original)
    # Worst cases: every pixel pushed to the edge of the float ball, or anywhere inside it.
    for attacked in (x0 + epsilon, x0 - epsilon, x0 + rng.uniform(-epsilon, epsilon, x0.shape)):
        png = quantize(backbone, attacked.astype(np.float32), original, epsilon)
        assert png.dtype == np.uint8
        change = np.abs(png.astype(int) - original.astype(int))
        assert (change <= np.floor(epsilon / step + 1e-3)).all()
        assert np.abs(preprocess(backbone, png) - x0).max() <= epsilon * (1 + 1e-3)
    if levels < 1:  # under one grey level the only 8-bit image in the ball is the original
        assert (quantize(backbone, x0 + epsilon, original, epsilon) == original).all()
    assert np.allclose(to_levels(backbone, x0), original, atol=1e-3)


def test_one_whole_grey_level_of_epsilon_allows_one_level():
    assert (allowed_levels("inception_v3", 1 / 127.5) == 1).all()
    assert (allowed_levels("inception_v3", 0.01) == 1).all()  # the book's 1.275 levels
    assert (allowed_levels("inception_v3", 0.0) == 0).all()


@pytest.fixture(scope="module")
def photos_96():
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    return np.stack([eval_crop(load_image(packaged_file("skimage", f"data/{n}")), 96) for n in names])


def test_fgsm_and_pgd_fool_nothing_at_zero_and_pgd_fools_every_photo_fgsm_does(photos_96):
    model, _ = load_classifier(params(), offline_mobilenet_v2_path(), 96)
    labels, rows = sweep(model, "mobilenet_v2", photos_96, [0.0, 0.01, 0.3], 2, 0.5, False)
    assert len(labels) == 4
    assert rows[0]["fgsm_success"] == rows[0]["pgd_success"] == 0.0
    for row in rows:
        assert all(p or not f for f, p in zip(row["fgsm"], row["pgd"], strict=True))  # PGD >= FGSM
    assert rows[-1]["pgd_success"] == 1.0  # 17 grey levels fool a real ImageNet network on every photo


def test_a_resumed_attack_ends_where_an_uninterrupted_one_does(tmp_path):
    p = params(**{**TINY, "threshold": 1.0, "max_steps": 4, "checkpoint_every": 1})
    whole, _, whole_dir = attack(tmp_path, p, key="same")
    # "Killed" after 2 steps: a run of 2, then the full run resuming from its checkpoint.
    attack(tmp_path, params(**{**TINY, "threshold": 1.0, "max_steps": 2}), "same", tmp_path / "killed")
    resumed, _, resumed_dir = attack(tmp_path, p, "same", tmp_path / "killed")
    assert json.loads((resumed_dir / RESULT).read_text())["resumed_from"] == 2
    np.testing.assert_allclose(np.load(resumed_dir / ATTACKED), np.load(whole_dir / ATTACKED), atol=1e-6)
    assert resumed["input_shape"] == whole["input_shape"] and resumed["parameters"] == whole["parameters"]
    numbers = {k: v for k, v in whole.items() if k not in ("input_shape", "parameters")}
    assert {k: resumed[k] for k in numbers} == pytest.approx(numbers)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, through the real steps, nothing half-written


def one_line_error(project, match: str, **overrides):
    """The error of running the steps with `overrides`: one line, and every slot left behind is a
    finished one (with its marker) or holds no files."""
    with pytest.raises(GdlError, match=match) as err:
        run_steps("adversarial", **overrides)
    assert "\n" not in str(err.value)
    for area in ("processed", "checkpoints", "runs"):
        folder = project / "data" / area / "adversarial"
        for slot in folder.iterdir() if folder.exists() else ():
            if slot.is_dir():
                files = [f for f in slot.rglob("*") if f.is_file()]
                assert not files or (slot / ".step.json").is_file(), f"half-written {slot}"
    return str(err.value)


def no_step_output(project, area: str) -> bool:
    folder = project / "data" / area / "adversarial"
    return not folder.exists() or not [
        f for f in folder.rglob("*") if f.is_file() and ".gdl-lock" not in f.name
    ]


def test_missing_image_is_one_line_error(project):
    one_line_error(project, "photo_source.*does not exist", photo_source=str(project / "nope.png"))


def test_non_image_file_is_one_line_error(project):
    (project / "cat.png").write_text("not a picture")
    one_line_error(project, "not an image", photo_source=str(project / "cat.png"))


def test_empty_image_file_is_one_line_error(project):
    (project / "cat.png").write_bytes(b"")
    one_line_error(project, "empty", photo_source=str(project / "cat.png"))


def test_one_pixel_image_is_one_line_error(project):
    save_png(project / "dot.png", np.zeros((1, 1, 3), np.uint8))
    one_line_error(project, "1x1 pixels", photo_source=str(project / "dot.png"))


def test_image_over_max_pixels_is_one_line_error(project):
    one_line_error(project, "over the limit of 1000 \\(max_pixels\\)", max_pixels=1000)
    assert no_step_output(project, "processed")


@pytest.mark.parametrize(
    ("field", "value"), [("epsilon", -0.01), ("target_class", 1000), ("target_class", -1)]
)
def test_bad_epsilon_or_target_class_is_refused_before_any_work(project, field, value):
    one_line_error(project, f"invalid parameters: adversarial.{field}", **{field: value})
    assert not (project / "data").exists()


def test_torch_weights_for_inception_are_one_line_error(project):
    message = one_line_error(
        project,
        "read for mobilenet_v2 only",
        backbone="inception_v3",
        weights_source=str(offline_mobilenet_v2_path()),
    )
    assert "inception_v3" in message and no_step_output(project, "checkpoints")


def test_weights_of_another_network_are_one_line_error(project):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="logits")])
    path = project / "other.weights.h5"
    other.save_weights(path)
    one_line_error(project, "do not fit", weights_source=str(path))
    assert no_step_output(project, "checkpoints")


def test_quantisation_aware_steps_make_the_saved_png_itself_fool_the_network(chelsea_attack):
    """The demo's floor: the 8-bit PNG, not only the float image, is classified as the target
    with p >= 0.8, changing no pixel by more than the epsilon's whole grey levels. Rounding the
    float attack alone does not get there (p ~0.5 measured): the PNG steps do."""
    p, summary, processed, out = chelsea_attack
    result = json.loads((out / RESULT).read_text())
    photo = np.load(processed / "photo.npy")
    model, _ = load_classifier(p, offline_mobilenet_v2_path(), photo.shape[0])

    def p_elephant(image: np.ndarray) -> tuple[float, int]:
        probs = np.asarray(model(preprocess(p.backbone, image)[None], training=False))[0]
        return float(probs[ELEPHANT]), int(np.argmax(probs))

    png = load_image(out / PNG)
    reached, top1 = p_elephant(png)
    assert reached >= 0.8 and top1 == ELEPHANT and result["png_steps"] >= 1
    assert np.abs(png.astype(int) - photo.astype(int)).max() <= allowed_levels(p.backbone, p.epsilon).max()
    rounded_only = quantize(p.backbone, np.load(out / ATTACKED), photo, p.epsilon)
    assert p_elephant(rounded_only)[0] < 0.8


def test_every_sweep_step_stays_inside_its_epsilon_ball_and_the_displayable_range(photos_96):
    from models.toolkit.attacks import sign_step
    from models.toolkit.backbones import pixel_bounds

    model, _ = load_classifier(params(), offline_mobilenet_v2_path(), 96)
    step = sign_step(model, "mobilenet_v2", False)
    x0 = preprocess("mobilenet_v2", photos_96).astype(np.float32)
    labels = np.asarray(model(x0, training=False)).argmax(-1)
    low, high = (b.reshape(1, 1, 1, 3) for b in pixel_bounds("mobilenet_v2"))
    for eps in (0.0, 0.01, 0.3):
        x = x0
        for _ in range(3):  # steps ten times epsilon: only the projection keeps them in the ball
            x = step(x, x0, labels, np.float32(eps), np.float32(10 * eps + 0.1))[0].numpy()
            assert np.abs(x - x0).max() <= eps + 1e-6
            assert (x >= low - 1e-6).all() and (x <= high + 1e-6).all()
