"""Perceptual losses (Gatys et al.; Chollet 8.3; Johnson et al.): content, Gram-matrix style and
total-variation losses on a frozen ImageNet convnet's features, shared by the optimisation
(`style_transfer`) and feed-forward (`fast_style_transfer`) techniques.

Everything works on batches of images already in the backbone's input space (see
`backbones.preprocess`, or `backbones.preprocess_tensor` inside a compiled function). With a batch of one
the numbers are exactly the book's: the content loss is the summed squared difference of one
layer's features, each style layer's loss is the summed squared difference of Gram matrices
scaled by 1 / (4 · channels² · size²) with the book's channels = 3 and size = the image's
height × width, weighted by style_weight / number of style layers, and the total-variation loss
is sum((dx² + dy²) ** 1.25) over the image. With a larger batch (training the feed-forward
network) every loss is the mean over the batch of those per-image losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOK_CHANNELS = 3  # Chollet 8.3 scales every style layer by the image's 3 channels, not the layer's
TV_POWER = 1.25  # Chollet 8.3's total-variation exponent


def gram_matrix(features):
    """(B, H, W, C) features -> (B, C, C): sum over positions of the outer product of channels."""
    import tensorflow as tf

    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.matmul(flat, flat, transpose_a=True)


def content_loss(target, combination):
    """Mean over the batch of the summed squared feature difference (Chollet 8.3)."""
    import tensorflow as tf

    return tf.reduce_mean(tf.reduce_sum(tf.square(combination - target), axis=[1, 2, 3]))


def style_scale(height, width):
    """The book's 1 / (4 · channels² · size²), channels = 3 and size = image height × width."""
    import tensorflow as tf

    size = tf.cast(height, tf.float32) * tf.cast(width, tf.float32)
    return 1.0 / (4.0 * BOOK_CHANNELS**2 * tf.square(size))


def style_loss(target_gram, combination_features, height, width):
    """Mean over the batch of ||G(target) - G(combination)||² / (4 · 3² · (height · width)²).

    `target_gram` is (C, C) (one style image for the whole batch) or (B, C, C)."""
    import tensorflow as tf

    diff = tf.square(target_gram - gram_matrix(combination_features))
    return tf.reduce_mean(tf.reduce_sum(diff, axis=[1, 2])) * style_scale(height, width)


def total_variation_loss(images):
    """Mean over the batch of sum((dx² + dy²) ** 1.25) on the image (Chollet 8.3)."""
    import tensorflow as tf

    corner = images[:, :-1, :-1, :]
    down = tf.square(corner - images[:, 1:, :-1, :])
    right = tf.square(corner - images[:, :-1, 1:, :])
    return tf.reduce_mean(tf.reduce_sum(tf.pow(down + right, TV_POWER), axis=[1, 2, 3]))


@dataclass(frozen=True)
class LossWeights:
    content: float
    style: float
    total_variation: float


class PerceptualLoss:
    """The weighted content + style + total-variation loss of images in the backbone's input space.

    `features` is a model from the backbone's input to a dict of layer outputs
    (`backbones.feature_model`) holding `content_layer` and every `style_layers` entry. The style
    targets (Gram matrices of one style image) are computed once; the content targets are given
    per call (fixed for optimisation NST, each batch's content images when training a network).
    """

    def __init__(
        self,
        features,
        content_layer: str,
        style_layers: Sequence[str],
        weights: LossWeights,
        style_image: np.ndarray,
    ):
        import tensorflow as tf

        self.features = features
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.weights = weights
        style = np.asarray(style_image, np.float32)
        style = style[None] if style.ndim == 3 else style
        out = features(tf.constant(style))
        self.style_size = style.shape[1:3]
        # The book's scale uses the size of the image being scored; the style targets are the
        # Gram matrices of the style image as the book computes them (same size as the result).
        self.style_grams = {n: tf.constant(gram_matrix(out[n])[0]) for n in self.style_layers}

    def content_features(self, images):
        """The content layer's features of `images` (the content targets)."""
        return self.features(images)[self.content_layer]

    def __call__(self, images, content_target) -> dict[str, Any]:
        """{"content", "style", "tv", "total"} as scalar tensors, weights applied to "total"."""
        import tensorflow as tf

        out = self.features(images)
        shape = tf.shape(images)
        c = content_loss(content_target, out[self.content_layer])
        s = tf.add_n(
            [style_loss(self.style_grams[n], out[n], shape[1], shape[2]) for n in self.style_layers]
        ) / float(len(self.style_layers))
        tv = total_variation_loss(images)
        w = self.weights
        total = w.content * c + w.style * s + w.total_variation * tv
        return {"content": c, "style": s, "tv": tv, "total": total}
