"""The GAN family's networks, as the books specify them (TECHNIQUES.md section 5).

Each builder takes the image shape (H, W, C) of the data, so a demo can train the same
architecture at another size, and returns a Keras model. Generators end in tanh (images in
[-1, 1]); a discriminator ends in a sigmoid for the bce loss and is a linear critic for the
Wasserstein loss (`critic=True`). `width` scales every hidden layer (1.0 = the book's): the demo
trains thinner networks on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.core.errors import GdlError


def _units(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def _head(x, critic: bool):
    from keras import layers

    return layers.Dense(1, activation=None if critic else "sigmoid", name="score")(x)


def _check_side(shape: tuple[int, int, int], multiple: int, what: str) -> None:
    h, w, _ = shape
    if h % multiple or w % multiple:
        raise GdlError(f"{what} needs image sides divisible by {multiple} (got {h}x{w}); set image_size")


# ---------------------------------------------------------------------------------------------
# Dense networks: vanilla GAN (Cookbook), conditional GAN and WGAN (Vasilev)


def dense_generator(
    shape, latent_dim: int, hidden=(256, 512, 1024), width: float = 1.0, num_classes: int = 0
):
    """Dense layers with LeakyReLU(0.2) + BatchNorm(momentum 0.8), tanh output (Cookbook 8:
    256-512-1024; Vasilev's cGAN/WGAN: 128-256-512). With `num_classes`, the label's embedding
    (latent_dim values) multiplies z element-wise (Vasilev's cGAN)."""
    import keras
    from keras import layers

    z = keras.Input((latent_dim,), name="z")
    inputs, x = z, z
    if num_classes:
        label = keras.Input((), dtype="int32", name="label")
        embedded = layers.Embedding(num_classes, latent_dim, name="label_embedding")(label)
        x = layers.Multiply(name="z_times_label")([z, embedded])
        inputs = [z, label]
    for i, n in enumerate(hidden):
        x = layers.Dense(_units(n, width), name=f"dense_{i + 1}")(x)
        x = layers.LeakyReLU(0.2)(x)
        x = layers.BatchNormalization(momentum=0.8)(x)
    x = layers.Dense(int(np.prod(shape)), activation="tanh", name="pixels")(x)
    return keras.Model(inputs, layers.Reshape(shape)(x), name="generator")


def dense_discriminator(
    shape, hidden=(784, 392), width: float = 1.0, num_classes: int = 0, critic: bool = False
):
    """Flatten, dense layers with LeakyReLU(0.2), one score (Cookbook 8: 784-392; Vasilev's
    cGAN/WGAN: 256-128). With `num_classes`, the label's embedding (one value per pixel)
    multiplies the flattened image (Vasilev's cGAN)."""
    import keras
    from keras import layers

    image = keras.Input(shape, name="image")
    inputs, x = image, layers.Flatten()(image)
    if num_classes:
        label = keras.Input((), dtype="int32", name="label")
        embedded = layers.Embedding(num_classes, int(np.prod(shape)), name="label_embedding")(label)
        x = layers.Multiply(name="image_times_label")([x, embedded])
        inputs = [image, label]
    for i, n in enumerate(hidden):
        x = layers.Dense(_units(n, width), name=f"dense_{i + 1}")(x)
        x = layers.LeakyReLU(0.2)(x)
    return keras.Model(inputs, _head(x, critic), name="critic" if critic else "discriminator")


# ---------------------------------------------------------------------------------------------
# DCGAN, Vasilev (MNIST)


def vasilev_generator(shape, latent_dim: int, width: float = 1.0):
    """Dense to (H/4, W/4, 256) without bias, BatchNorm + LeakyReLU, then Conv2DTranspose 128
    (stride 1), 64 (stride 2) and C (stride 2, tanh), 5x5, BatchNorm + LeakyReLU between."""
    import keras
    from keras import layers

    _check_side(shape, 4, "the DCGAN (mnist) generator")
    h, w, c = shape
    f = _units(256, width)
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(h // 4 * w // 4 * f, use_bias=False)(z)
    x = layers.LeakyReLU()(layers.BatchNormalization()(x))
    x = layers.Reshape((h // 4, w // 4, f))(x)
    for filters, stride in ((128, 1), (64, 2)):
        x = layers.Conv2DTranspose(_units(filters, width), 5, strides=stride, padding="same", use_bias=False)(
            x
        )
        x = layers.LeakyReLU()(layers.BatchNormalization()(x))
    out = layers.Conv2DTranspose(c, 5, strides=2, padding="same", use_bias=False, activation="tanh")(x)
    return keras.Model(z, out, name="generator")


def vasilev_discriminator(shape, width: float = 1.0, critic: bool = False):
    """Conv2D 64 and 128, 5x5 stride 2, LeakyReLU + Dropout(0.3) each, one score."""
    import keras
    from keras import layers

    image = keras.Input(shape, name="image")
    x = image
    for filters in (64, 128):
        x = layers.Conv2D(_units(filters, width), 5, strides=2, padding="same")(x)
        x = layers.Dropout(0.3)(layers.LeakyReLU()(x))
    return keras.Model(image, _head(layers.Flatten()(x), critic), name="discriminator")


# ---------------------------------------------------------------------------------------------
# DCGAN, Chollet (CIFAR-10 frogs)


def chollet_generator(shape, latent_dim: int, width: float = 1.0):
    """Dense to (H/2, W/2, 128), Conv2D 256 5x5, Conv2DTranspose 256 4x4 stride 2 up to H x W,
    two Conv2D 256 5x5, Conv2D C 7x7 tanh; LeakyReLU throughout (Chollet 8.5)."""
    import keras
    from keras import layers

    _check_side(shape, 2, "the DCGAN (frogs) generator")
    h, w, c = shape
    f = _units(256, width)
    z = keras.Input((latent_dim,), name="z")
    x = layers.LeakyReLU()(layers.Dense(h // 2 * w // 2 * _units(128, width))(z))
    x = layers.Reshape((h // 2, w // 2, _units(128, width)))(x)
    x = layers.LeakyReLU()(layers.Conv2D(f, 5, padding="same")(x))
    x = layers.LeakyReLU()(layers.Conv2DTranspose(f, 4, strides=2, padding="same")(x))
    for _ in range(2):
        x = layers.LeakyReLU()(layers.Conv2D(f, 5, padding="same")(x))
    out = layers.Conv2D(c, 7, activation="tanh", padding="same")(x)
    return keras.Model(z, out, name="generator")


def chollet_discriminator(shape, width: float = 1.0, critic: bool = False):
    """Conv2D 128 3x3, three Conv2D 128 4x4 stride 2, LeakyReLU each, Flatten, Dropout(0.4),
    one score (Chollet 8.5: strided convolutions, no max pooling, dropout in D)."""
    import keras
    from keras import layers

    f = _units(128, width)
    image = keras.Input(shape, name="image")
    x = layers.LeakyReLU()(layers.Conv2D(f, 3)(image))
    for _ in range(3):
        x = layers.LeakyReLU()(layers.Conv2D(f, 4, strides=2)(x))
    x = layers.Dropout(0.4)(layers.Flatten()(x))
    return keras.Model(image, _head(x, critic), name="discriminator")


# ---------------------------------------------------------------------------------------------
# Face DCGAN, Cookbook


def cookbook_generator(shape, latent_dim: int, width: float = 1.0):
    """Dense 1024 tanh, Dense to (H/4, W/4, 128) + BatchNorm + tanh, then twice UpSampling2D
    and Conv2D 5x5 (64 tanh, then C tanh) (Cookbook 8, faces at 56x56)."""
    import keras
    from keras import layers

    _check_side(shape, 4, "the face generator")
    h, w, c = shape
    f = _units(128, width)
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(_units(1024, width), activation="tanh")(z)
    x = layers.Dense(h // 4 * w // 4 * f)(x)
    x = layers.Activation("tanh")(layers.BatchNormalization()(x))
    x = layers.Reshape((h // 4, w // 4, f))(x)
    x = layers.UpSampling2D()(x)
    x = layers.Conv2D(_units(64, width), 5, padding="same", activation="tanh")(x)
    x = layers.UpSampling2D()(x)
    out = layers.Conv2D(c, 5, padding="same", activation="tanh")(x)
    return keras.Model(z, out, name="generator")


def cookbook_discriminator(shape, width: float = 1.0, critic: bool = False):
    """Conv2D 64 5x5 tanh, MaxPool, Conv2D 128 5x5 tanh, MaxPool, Dense 1024 tanh, one score."""
    import keras
    from keras import layers

    image = keras.Input(shape, name="image")
    x = layers.Conv2D(_units(64, width), 5, padding="same", activation="tanh")(image)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(_units(128, width), 5, activation="tanh")(x)
    x = layers.Flatten()(layers.MaxPooling2D()(x))
    x = layers.Dense(_units(1024, width), activation="tanh")(x)
    return keras.Model(image, _head(x, critic), name="discriminator")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A generator and a discriminator builder: (shape, latent_dim, width, num_classes, critic)."""

    generator: Callable[..., Any]
    discriminator: Callable[..., Any]
    conditional: bool = False

    def build(self, shape, latent_dim: int, width: float, num_classes: int = 0, critic: bool = False):
        extra = {"num_classes": num_classes} if self.conditional else {}
        try:
            G = self.generator(tuple(shape), latent_dim, width=width, **extra)
            D = self.discriminator(tuple(shape), width=width, critic=critic, **extra)
        except ValueError as exc:  # Keras: a valid convolution left no pixels
            if "would be zero or negative" not in str(exc):
                raise
            raise GdlError(
                f"images of {shape[0]}x{shape[1]} are too small for these networks; set a larger image_size"
            ) from None
        return G, D


def _vasilev_dense_generator(shape, latent_dim, width=1.0, num_classes=0):
    return dense_generator(shape, latent_dim, (128, 256, 512), width, num_classes)


def _vasilev_dense_discriminator(shape, width=1.0, critic=False, num_classes=0):
    return dense_discriminator(shape, (256, 128), width, num_classes, critic)


def _cookbook_dense_discriminator(shape, width=1.0, critic=False):
    pixels = int(np.prod(shape))  # Cookbook 8: as many units as pixels, then half
    return dense_discriminator(shape, (pixels, pixels // 2), width, 0, critic)


ARCHITECTURES = {
    "cookbook_dense": Architecture(dense_generator, _cookbook_dense_discriminator),
    "vasilev_dcgan": Architecture(vasilev_generator, vasilev_discriminator),
    "chollet_dcgan": Architecture(chollet_generator, chollet_discriminator),
    "vasilev_dense": Architecture(_vasilev_dense_generator, _vasilev_dense_discriminator),
    "vasilev_cgan": Architecture(_vasilev_dense_generator, _vasilev_dense_discriminator, conditional=True),
    "cookbook_faces": Architecture(cookbook_generator, cookbook_discriminator),
}
