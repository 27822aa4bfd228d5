"""Sampling from a trained text_lstm model: the book's temperature reweighting and a compiled,
batched sampler (one stream per temperature)."""

from __future__ import annotations

import numpy as np


def reweight(preds: np.ndarray, temperature: float) -> np.ndarray:
    """The book's reweighting, p ** (1/T) renormalised, in float64 (no log(0) at any T > 0)."""
    p = np.asarray(preds, dtype=np.float64) ** (1.0 / temperature)
    return p / p.sum(axis=-1, keepdims=True)


class TextSampler:
    """Compiled, batched generation from a trained text_lstm model, one stream per temperature.

    The Dense layer's logits are computed directly, so reweighting by temperature is
    softmax(logits / T): identical to the book's p ** (1/T) renormalised, without taking the log
    of a probability that underflowed to 0.
    """

    def __init__(self, model):
        import keras
        import tensorflow as tf

        self.lstm = next(lyr for lyr in model.layers if isinstance(lyr, keras.layers.LSTM))
        self.dense = model.layers[-1]
        _, self.maxlen, self.n_vocab = model.input_shape
        self._tf = tf
        spec = [
            tf.TensorSpec([None, self.maxlen], tf.int32),  # windows (streams, maxlen)
            tf.TensorSpec([None], tf.float32),  # 1 / temperature per stream
            tf.TensorSpec([], tf.int32),  # characters to generate
            tf.TensorSpec([], tf.int32),  # sampling seed
        ]
        self._window_fn = tf.function(self._window_loop, input_signature=spec)
        self._stateful_fn = tf.function(self._stateful_loop, input_signature=spec)

    def _logits(self, h):
        tf = self._tf
        return tf.matmul(tf.cast(h, tf.float32), tf.cast(self.dense.kernel, tf.float32)) + tf.cast(
            self.dense.bias, tf.float32
        )

    def _window_logits(self, windows):
        return self._logits(self.lstm(self._tf.one_hot(windows, self.n_vocab)))

    def _draw(self, logits, inv_t, seed, i):
        tf = self._tf
        return tf.random.stateless_categorical(
            logits * inv_t[:, None], 1, seed=tf.stack([seed, i]), dtype=tf.int32
        )[:, 0]

    def _window_loop(self, windows, inv_t, length, seed):
        tf = self._tf
        out = tf.TensorArray(tf.int32, size=length)

        def body(i, windows, out):
            nxt = self._draw(self._window_logits(windows), inv_t, seed, i)
            return i + 1, tf.concat([windows[:, 1:], nxt[:, None]], axis=1), out.write(i, nxt)

        _, _, out = tf.while_loop(lambda i, *_: i < length, body, (0, windows, out))
        return tf.transpose(out.stack())

    def _stateful_loop(self, windows, inv_t, length, seed):
        tf = self._tf
        cell = self.lstm.cell
        batch = tf.shape(windows)[0]
        state = [tf.zeros([batch, cell.units]), tf.zeros([batch, cell.units])]
        h = state[0]
        x = tf.one_hot(windows, self.n_vocab)
        for t in range(self.maxlen):  # warm the state on the seed window
            h, state = cell(x[:, t], state)
        out = tf.TensorArray(tf.int32, size=length)

        def body(i, h, c, out):
            nxt = self._draw(self._logits(h), inv_t, seed, i)
            h, (h2, c) = cell(tf.one_hot(nxt, self.n_vocab), [h, c])
            return i + 1, h, c, out.write(i, nxt)

        _, _, _, out = tf.while_loop(lambda i, *_: i < length, body, (0, h, state[1], out))
        return tf.transpose(out.stack())

    def next_distribution(self, window: np.ndarray, temperature: float) -> np.ndarray:
        """The reweighted next-character distribution for one window (float64)."""
        logits = self._window_logits(np.asarray(window, np.int32)[None]).numpy()[0]
        z = logits.astype(np.float64) / temperature
        z = np.exp(z - z.max())
        return z / z.sum()

    def generate(
        self,
        seed_ids: np.ndarray,
        temperatures: list[float],
        length: int,
        mode: str = "window",
        seed: int = 0,
    ) -> np.ndarray:
        """`length` new character indices per temperature, shape (len(temperatures), length)."""
        windows = np.repeat(np.asarray(seed_ids, np.int32)[None, -self.maxlen :], len(temperatures), axis=0)
        inv_t = (1.0 / np.asarray(temperatures, np.float64)).astype(np.float32)
        fn = self._stateful_fn if mode == "stateful" else self._window_fn
        return fn(windows, inv_t, np.int32(length), np.int32(seed)).numpy()
