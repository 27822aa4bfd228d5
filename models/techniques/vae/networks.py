"""The VAE's networks and losses (see models/techniques/vae/technique.py for the technique):
the negative ELBO's two terms, the sampling layer and the VAE model (custom Keras classes,
registered for safe-mode loading), the conv (Chollet 8.4) and dense (Vasilev) encoders and
decoders, and the training settings each book uses.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.core.errors import GdlError

if TYPE_CHECKING:
    from models.techniques.vae.technique import VAEParams

CHOLLET_KL_SCALE = 5e-4  # Chollet 8.4: kl_loss = -5e-4 * mean(1 + log_var - mean^2 - exp(log_var))
BOOK = {
    # variant: (optimizer, batch size, epochs) as the books train it
    "conv": ("rmsprop", 16, 10),
    "dense": ("adam", 128, 50),
}


def book(p: VAEParams) -> dict[str, Any]:
    """The training settings in force: the params, or the variant's book values where null."""
    optimizer, batch, epochs = BOOK[p.variant]
    return {
        "optimizer": optimizer,
        "batch_size": p.batch_size or batch,
        "epochs": p.epochs or epochs,
    }


def kl_weight(p: VAEParams, image_shape: tuple[int, ...]) -> float:
    if p.kl_weight is not None:
        return p.kl_weight
    if p.variant == "dense":
        return 1.0
    return 2 * CHOLLET_KL_SCALE * int(np.prod(image_shape)) / p.latent_dim


# ---------------------------------------------------------------------------------------------
# Model


def reconstruction_loss(x, decoded):
    """Binary cross-entropy summed over pixels: nats per image."""
    from keras import ops

    return ops.sum(ops.binary_crossentropy(x, decoded), axis=tuple(range(1, len(x.shape))))


def kl_divergence(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, 1)) summed over latent dimensions: nats per image."""
    from keras import ops

    return -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


@functools.cache
def sampling_and_vae_classes():
    """The VAE's custom Keras classes, registered once (so `.keras` files load in safe mode)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="gdl")
    class Sampling(keras.layers.Layer):
        """The reparameterisation trick: z = mean + exp(log_var / 2) * epsilon. Epsilon is drawn
        statelessly from (seed, draws so far), and the draw counter is a weight: it is saved with
        every checkpoint, so a resumed run draws exactly what an uninterrupted one would (a Keras
        SeedGenerator's state is not saved with the model)."""

        def __init__(self, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.seed = seed

        def build(self, input_shape):
            self.draws = self.add_weight(
                shape=(), dtype="int64", initializer="zeros", trainable=False, name="draws"
            )

        def call(self, inputs):
            import tensorflow as tf

            z_mean, z_log_var = inputs
            self.draws.assign_add(1)
            seed = tf.stack([tf.constant(self.seed or 0, tf.int64), tf.cast(self.draws, tf.int64)])
            replica = tf.distribute.get_replica_context()
            if replica is None or replica.num_replicas_in_sync == 1:
                epsilon = tf.random.stateless_normal(tf.shape(z_mean), seed=seed, dtype=z_mean.dtype)
            else:
                # Data-parallel: this replica's slice of the global batch's draw (equal shards),
                # so R replicas add the noise one device would.
                n, i = replica.num_replicas_in_sync, replica.replica_id_in_sync_group
                local = tf.shape(z_mean)[0]
                shape = tf.concat([[local * n], tf.shape(z_mean)[1:]], axis=0)
                epsilon = tf.random.stateless_normal(shape, seed=seed, dtype=z_mean.dtype)
                epsilon = epsilon[i * local : (i + 1) * local]
            return z_mean + ops.exp(0.5 * z_log_var) * epsilon

        def get_config(self):
            return {**super().get_config(), "seed": self.seed}

    @keras.saving.register_keras_serializable(package="gdl")
    class VAE(keras.Model):
        """Encoder + sampling + decoder, trained on the negative ELBO (reconstruction +
        kl_weight * KL); reports both terms separately."""

        def __init__(self, encoder, decoder, kl_weight: float = 1.0, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.decoder = encoder, decoder
            self.kl_weight = float(kl_weight)
            self.seed = seed
            self.sampling = Sampling(seed, name="sampling")
            self.trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", "reconstruction", "kl")}

        @property
        def metrics(self):
            return list(self.trackers.values())

        def call(self, x, training=False):
            z_mean, z_log_var = self.encoder(x, training=training)
            return self.decoder(self.sampling([z_mean, z_log_var]), training=training)

        def _terms(self, x, training):
            z_mean, z_log_var = self.encoder(x, training=training)
            decoded = self.decoder(self.sampling([z_mean, z_log_var]), training=training)
            rec = ops.mean(reconstruction_loss(x, decoded))
            kl = ops.mean(kl_divergence(z_mean, z_log_var))
            return rec + self.kl_weight * kl, rec, kl

        def _track(self, loss, rec, kl):
            for name, value in (("loss", loss), ("reconstruction", rec), ("kl", kl)):
                self.trackers[name].update_state(value)
            return {name: t.result() for name, t in self.trackers.items()}

        def train_step(self, data):
            import tensorflow as tf

            x = data[0] if isinstance(data, tuple) else data
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            with tf.GradientTape() as tape:
                loss, rec, kl = self._terms(x, training=True)
                # Data-parallel: each replica's mean is 1/R of the global batch's (equal
                # shards), and the optimizer sums the replicas' gradients.
                scaled = loss / replicas if replicas > 1 else loss
            grads = tape.gradient(scaled, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
            return self._track(loss, rec, kl)

        def test_step(self, data):
            x = data[0] if isinstance(data, tuple) else data
            return self._track(*self._terms(x, training=False))

        def get_config(self):
            return {
                **super().get_config(),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "kl_weight": self.kl_weight,
                "seed": self.seed,
            }

        @classmethod
        def from_config(cls, config):
            config = dict(config)
            encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
            decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
            return cls(encoder, decoder, **config)

    return Sampling, VAE


def build_encoder(p: VAEParams, shape: tuple[int, int, int]):
    """Image -> (z_mean, z_log_var)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape, name="image")
    if p.variant == "conv":
        f = p.conv_filters
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name="conv_1")(inputs)
        x = layers.Conv2D(2 * f, 3, strides=2, padding="same", activation="relu", name="conv_2")(x)
        x = layers.Conv2D(2 * f, 3, padding="same", activation="relu", name="conv_3")(x)
        x = layers.Conv2D(2 * f, 3, padding="same", activation="relu", name="conv_4")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(p.conv_dense_units, activation="relu", name="dense")(x)
    else:
        x = layers.Flatten(name="flatten")(inputs)
        x = layers.Dense(p.hidden_units, activation="relu", name="hidden")(x)
    z_mean = layers.Dense(p.latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(p.latent_dim, name="z_log_var")(x)
    return keras.Model(inputs, [z_mean, z_log_var], name="encoder")


def build_decoder(p: VAEParams, shape: tuple[int, int, int]):
    """Latent point -> pixel probabilities of the image's shape."""
    import keras
    from keras import layers

    h, w, c = shape
    inputs = keras.Input((p.latent_dim,), name="z")
    if p.variant == "conv":
        f = p.conv_filters
        x = layers.Dense((h // 2) * (w // 2) * 2 * f, activation="relu", name="dense")(inputs)
        x = layers.Reshape((h // 2, w // 2, 2 * f), name="unflatten")(x)
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu", name="deconv")(x)
        outputs = layers.Conv2D(c, 3, padding="same", activation="sigmoid", name="pixels")(x)
    else:
        x = layers.Dense(p.hidden_units, activation="relu", name="hidden")(inputs)
        x = layers.Dense(h * w * c, activation="sigmoid", name="pixels")(x)
        outputs = layers.Reshape(shape, name="image")(x)
    return keras.Model(inputs, outputs, name="decoder")


def build_vae(p: VAEParams, shape: tuple[int, int, int]):
    """The compiled VAE for images of `shape` (H, W, C) in [0, 1]."""
    import keras

    if len(shape) != 3:
        raise GdlError(f"vae: expected images (height, width, channels), got shape {tuple(shape)}")
    if p.variant == "conv" and (shape[0] % 2 or shape[1] % 2):
        raise GdlError(
            f"vae: the conv variant halves the image once: height and width must be even (got {shape})"
        )
    _, vae_class = sampling_and_vae_classes()
    keras.utils.set_random_seed(p.seed)
    vae = vae_class(build_encoder(p, shape), build_decoder(p, shape), kl_weight(p, shape), p.seed, name="vae")
    settings = book(p)
    optimizer = (
        keras.optimizers.RMSprop(learning_rate=p.learning_rate)
        if settings["optimizer"] == "rmsprop"
        else keras.optimizers.Adam(learning_rate=p.learning_rate)
    )
    vae.compile(optimizer=optimizer, jit_compile=p.jit_compile)
    vae(np.zeros((1, *shape), np.float32))  # build every weight now (a loaded model is built the same way)
    return vae


def load_vae(path: Path):
    """A trained VAE from its `.keras` file, in safe mode."""
    from models.toolkit.training import load_model

    sampling_and_vae_classes()  # register the custom classes
    return load_model(path)
