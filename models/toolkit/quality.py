"""Sample quality, measured: Fréchet distance (FID) and kernel distance (KID) between generated
and held-out real images, in the feature space of a network that knows the domain.

Two feature extractors:
  digits    a small convnet the pipeline trains itself on the same digits (what TF-GAN's MNIST
            Fréchet distance does with its own MNIST classifier): its penultimate layer
            (`features`, 128 units) gives the features, its softmax the predicted digit (for a
            conditional GAN's per-label accuracy).
  imagenet  the offline ImageNet MobileNetV2 (models/toolkit/backbones.py), globally average-pooled
            `head_relu` (1280 features), for colour images and faces.

FID and KID of the same images differ with how images reach the network (clean-fid): every
image is first quantised to 8 bits (as a saved PNG would be), then resized with one fixed filter
(Pillow's bicubic, antialiased when shrinking). The ImageNet extractor's input side is 96 px by
default, not the 224 px MobileNetV2 was trained at: CPU-sized, and stated in every report. Scores
are comparable only between runs with the same extractor, side and sample sizes.

FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)), in float64.
KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unbiased, so it is ~0 (and may be
slightly negative) for two samples of one distribution, and it suits small sample sets better
than FID, whose estimate is biased upwards for few samples.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import GdlError

Extractor = Callable[[np.ndarray], np.ndarray]  # images in [0, 1], NHWC -> features (N, d)

DIGIT_SIDE = 28
DIGIT_CLASSES = 10
FEATURE_LAYER = "features"
DIGITS_FEATURES = 128
IMAGENET_SIDE = 96  # CPU-sized; MobileNetV2 was trained at 224
RESAMPLE = "bicubic"
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000
BATCH = 256  # images per forward pass when extracting features
CLASSIFIER_BATCH = 32  # small batches: a few thousand digits still give hundreds of steps


# ---------------------------------------------------------------------------------------------
# The distances


def _features(feats: Any, what: str) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2 or f.shape[1] < 1:
        raise GdlError(f"{what} must be a (samples, features) array of at least 2 samples (got {f.shape})")
    if not np.isfinite(f).all():
        raise GdlError(f"{what} holds NaN or infinite values")
    return f


def _pair(real_feats: Any, fake_feats: Any) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _features(real_feats, "real features"), _features(fake_feats, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise GdlError(f"real and generated features differ in width ({real.shape[1]} vs {fake.shape[1]})")
    return real, fake


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((s1 s2)^(1/2)) for covariance matrices: scipy's sqrtm, retried with a small ridge on
    both diagonals when the product is singular (few samples, many features); the imaginary
    rounding noise sqrtm leaves is dropped. Without scipy, the eigen route."""
    try:
        from scipy import linalg
    except ImportError:  # scipy is a dependency, but the metric must not need it
        return _trace_sqrt_product_eigen(s1, s2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(s1 @ s2)
    if caught or not np.isfinite(root).all():  # singular: dead ReLU units have no variance
        ridge = np.eye(len(s1)) * 1e-6
        root = linalg.sqrtm((s1 + ridge) @ (s2 + ridge))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3 * max(1.0, np.abs(root).max())):
            return _trace_sqrt_product_eigen(s1, s2)  # sqrtm went astray: the exact symmetric route
        root = root.real
    return float(np.trace(root))


def _trace_sqrt_product_eigen(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((s1 s2)^(1/2)) = sum of the square roots of the eigenvalues of s1^(1/2) s2 s1^(1/2),
    a symmetric positive semi-definite matrix (same eigenvalues as s1 s2): eigh only, and tiny
    negative eigenvalues from rounding are clipped to 0."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(real_feats: Any, fake_feats: Any) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (FID on Inception
    features; here on whichever features are given)."""
    real, fake = _pair(real_feats, fake_feats)
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2))
    return max(value, 0.0)  # a distance: rounding must not make identical sets negative


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel: (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of the squared MMD between samples x and y (same size m): the
    within-sample kernel means leave out the diagonal (k(x_i, x_i))."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kernel_inception_distance(
    real_feats: Any,
    fake_feats: Any,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> float:
    """KID: the mean over `subsets` random subsets (without replacement, `subset_size` from each
    side, capped at the smaller set) of the unbiased squared MMD with the cubic kernel."""
    real, fake = _pair(real_feats, fake_feats)
    if subsets < 1 or subset_size < 2:
        raise GdlError(f"KID needs subsets >= 1 and subset_size >= 2 (got {subsets}, {subset_size})")
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    scores = [
        mmd2_unbiased(
            real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------
# Images on their way to a network: quantised, then resized with one filter


def prepare_images(images01: Any, side: int, channels: int) -> np.ndarray:
    """Images in [0, 1] (N, H, W, C), or (N, H, W) -> uint8 (N, side, side, channels): quantised
    to 8 bits first, then resized (bicubic); greyscale is repeated into 3 channels if asked."""
    from models.core.images import resize, to_uint8

    x = np.asarray(images01)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise GdlError(f"expected images (N, H, W, 1 or 3) in [0, 1] (got shape {x.shape})")
    if x.shape[-1] == 3 and channels == 1:
        raise GdlError(f"a greyscale feature extractor was given colour images (shape {x.shape})")
    pixels = to_uint8(x)
    if pixels.shape[1:3] != (side, side):
        pixels = np.stack([resize(im, size=(side, side), resample=RESAMPLE) for im in pixels])
        pixels = pixels.reshape(len(x), side, side, -1)
    if pixels.shape[-1] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels


# ---------------------------------------------------------------------------------------------
# The digits classifier (the pipeline's own feature extractor for digits)


def build_digits_classifier(seed: int = 0):
    """A small convnet for 28x28x1 digits in [0, 1]; its penultimate layer is `features`."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((DIGIT_SIDE, DIGIT_SIDE, 1), name="digits")
    x = layers.Conv2D(32, 3, activation="relu", name="conv_1")(inputs)
    x = layers.MaxPooling2D(name="pool_1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv_2")(x)
    x = layers.MaxPooling2D(name="pool_2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Dense(DIGITS_FEATURES, activation="relu", name=FEATURE_LAYER)(x)
    outputs = layers.Dense(DIGIT_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="digits_classifier")


def _digits(x01: Any, what: str) -> np.ndarray:
    x = np.asarray(x01, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE, 1):
        raise GdlError(f"{what}: the digits classifier takes 28x28x1 images in [0, 1] (got shape {x.shape})")
    return x


def train_digits_classifier(
    x: Any, y: Any, *, epochs: int = 3, seed: int = 0, log: Callable[[str], None] = print
):
    """Train the digits classifier on labelled digits (N, 28, 28, 1) in [0, 1]; Adam, batch 32."""
    x = _digits(x, "training digits")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= DIGIT_CLASSES:
        raise GdlError(
            f"the digits classifier needs one label 0..9 per image (got labels of shape {y.shape})"
        )
    if epochs < 1:
        raise GdlError(f"epochs must be at least 1 (got {epochs})")
    import keras

    model = build_digits_classifier(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    order = np.random.default_rng(seed).permutation(len(x))
    history = model.fit(
        x[order], y[order], batch_size=CLASSIFIER_BATCH, epochs=epochs, verbose=0, shuffle=False
    )
    log(
        f"digits classifier: {epochs} epochs on {len(x)} digits, training accuracy "
        f"{history.history['accuracy'][-1]:.3f}"
    )
    return model


def save_classifier(model, path: Path) -> None:
    """Save as a `.keras` file (written beside, then renamed: never half a file)."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_classifier(path: Path):
    """Load a saved digits classifier in safe mode; a file without the feature layer is refused."""
    from models.toolkit.training import load_model

    path = Path(path)
    if not path.is_file():
        raise GdlError(f"digits classifier {path} does not exist")
    model = load_model(path)
    if FEATURE_LAYER not in {layer.name for layer in model.layers}:
        raise GdlError(f"{path.name} is not a digits classifier (it has no layer {FEATURE_LAYER!r})")
    return model


def _batched(model, x: np.ndarray) -> np.ndarray:
    """Direct calls batch by batch (`predict` retraces for every new model it serves)."""
    outs = [np.asarray(model(x[i : i + BATCH], training=False)) for i in range(0, len(x), BATCH)]
    return np.concatenate(outs).astype(np.float64)


_FEATURE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _feature_model(model):
    """The classifier cut at its `features` layer, built once per classifier (a new model per
    call would retrace its predict function every time)."""
    import keras

    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = keras.Model(model.inputs[0], model.get_layer(FEATURE_LAYER).output)
    return _FEATURE_MODELS[model]


def classifier_features(model, x01: Any) -> np.ndarray:
    """The `features` layer's activations for digits in [0, 1] (quantised to 8 bits first)."""
    x = prepare_images(_digits(x01, "digits"), DIGIT_SIDE, 1).astype(np.float32) / 255.0
    return _batched(_feature_model(model), x)


def classifier_predict(model, x01: Any) -> np.ndarray:
    """Class probabilities (N, 10) for digits in [0, 1] (quantised to 8 bits first)."""
    x = prepare_images(_digits(x01, "digits"), DIGIT_SIDE, 1).astype(np.float32) / 255.0
    return _batched(model, x)


def digits_extractor(model) -> Extractor:
    return lambda images01: classifier_features(model, images01)


# ---------------------------------------------------------------------------------------------
# ImageNet features (colour images, faces)


class ImageNetFeatures:
    """MobileNetV2's globally pooled `head_relu` features (1280) for images in [0, 1]; built once,
    called on real and generated images alike. `described` says which weights and input side."""

    def __init__(self, weights_path: Path | None, side: int = IMAGENET_SIDE):
        import tensorflow as tf

        from models.toolkit.backbones import feature_model, load_backbone, preprocess_tensor

        if side < 16:
            raise GdlError(f"the ImageNet feature side must be at least 16 px (got {side})")
        backbone, weights = load_backbone("mobilenet_v2", weights_path, include_top=False)
        head = feature_model(backbone, ["head_relu"])

        @tf.function(input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8)])
        def pooled(pixels):
            maps = head(preprocess_tensor("mobilenet_v2", tf.cast(pixels, tf.float32)), training=False)
            return tf.reduce_mean(maps["head_relu"], axis=[1, 2])  # global average pooling

        self.pooled = pooled
        self.side = side
        self.described = f"{weights}; pooled head_relu features of {side}x{side} inputs (bicubic)"

    def __call__(self, images01: Any) -> np.ndarray:
        pixels = prepare_images(images01, self.side, 3)
        out = [self.pooled(pixels[i : i + BATCH]).numpy() for i in range(0, len(pixels), BATCH)]
        return np.concatenate(out).astype(np.float64)


# ---------------------------------------------------------------------------------------------


def quality_metrics(
    real01: Any,
    fake01: Any,
    extractor: Extractor,
    *,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, float]:
    """{"fid", "kid"} between real and generated images in [0, 1], in `extractor`'s features."""
    real, fake = extractor(real01), extractor(fake01)
    return {
        "fid": frechet_distance(real, fake),
        "kid": kernel_inception_distance(
            real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
        ),
    }


def luminance_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB images of one size on their luminance (ITU-R BT.601 weights): how
    much of one image's structure the other keeps, whatever their colours (a stylised photo
    against the photo)."""
    import tensorflow as tf

    if a.shape != b.shape:
        raise ValueError(f"luminance_ssim: images of shapes {a.shape} and {b.shape}")
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    luma = [tf.constant((x.astype(np.float32) / 255.0) @ weights)[..., None] for x in (a, b)]
    side = min(a.shape[:2])
    return float(tf.image.ssim(luma[0], luma[1], max_val=1.0, filter_size=min(11, side)))
