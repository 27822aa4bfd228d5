"""GAN training, side by side in one run: our compiled step vs the books' Keras loop.

Both train the same networks (the same initial weights) on the same batch size:
  book      generator.predict(noise), D.train_on_batch on the real batch and on the generated
            batch, then the combined model's (G -> frozen D) train_on_batch: four Keras calls, two
            host round trips of images per step (Vasilev's and the Cookbook's loops). The books
            freeze D in the combined model; Keras 3 reads `trainable` when a model's train
            function is first traced (not at compile), so D is frozen for the combined model's
            first call, and the warm-up checks that D's weights stay unchanged by it.
  keras-io  the best public Keras code (keras-io's "GAN overriding Model.train_step"): a
            keras.Model whose train_step draws the latents on the device, trains D on the fake
            and real images as ONE concatenated batch (labels with 0.05 uniform noise, as the
            example), then G through D; run by `fit` over a prefetched tf.data pipeline
  compiled  make_train_step (models/techniques/gan/): D's and G's updates in one tf.function,
            with the batch's randomness drawn on the host (draw_batch) as the pipeline does
  grouped   the compiled step's updates for `--per-call` steps in ONE tf.function call (their
            host-drawn batches stacked): what "several steps per compiled call" would save of
            the per-step overhead (a Python round trip, the batch's transfer, the metrics' sync)
The three are not the same update (DIFFERENCES, printed): the ratios compare steps of the same
networks, batch and optimizers.
Each is timed over `--steps` steps after untimed warm-up steps (tracing, Keras' own compilation).

The last line printed is one JSON object with the timings and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from models.techniques.gan.networks import ARCHITECTURES  # noqa: E402
from models.techniques.gan.trainer import Recipe, draw_batch, make_optimizer, make_train_step

WARMUP = 3


def networks(arch: str, shape, latent_dim: int, width: float, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return ARCHITECTURES[arch].build(shape, latent_dim, width)


def book_loop(G, D, x: np.ndarray, latent_dim: int, batch: int, lr: float):
    """The books' loop: D compiled on its own, then frozen inside a compiled combined model.

    Keras 2 fixed the trainable weights at compile(); Keras 3 fixes them when the train
    function is traced, at its first call. So D stays frozen until the combined model's first
    train_on_batch has traced, then is unfrozen for its own updates: the books' intent, kept.
    `step(i, check=True)` raises if the combined update changed any of D's weights."""
    import keras

    D.compile(optimizer=make_optimizer("adam", lr, 0.5, 0.999, None), loss="binary_crossentropy")
    D.trainable = False
    z = keras.Input((latent_dim,))
    combined = keras.Model(z, D(G(z)))
    combined.compile(optimizer=make_optimizer("adam", lr, 0.5, 0.999, None), loss="binary_crossentropy")
    traced = []
    rng = np.random.default_rng(0)
    real_y, fake_y = np.ones((batch, 1), np.float32), np.zeros((batch, 1), np.float32)

    def step(_, check: bool = False):
        real = x[rng.integers(0, len(x), batch)]
        noise = rng.standard_normal((batch, latent_dim), dtype=np.float32)
        fake = G.predict(noise, verbose=0)
        if not traced:
            D.trainable = True  # D's own train function is traced with D trainable
        d_real = D.train_on_batch(real, real_y)
        d_fake = D.train_on_batch(fake, fake_y)
        if not traced:
            D.trainable = False  # ... and the combined model's with D frozen (the books' intent)
        noise = rng.standard_normal((batch, latent_dim), dtype=np.float32)
        before = [w.numpy().copy() for w in D.weights] if check or not traced else None
        g_loss = combined.train_on_batch(noise, real_y)
        if before is not None:
            pairs = zip(D.weights, before, strict=True)
            changed = [w.path for w, b in pairs if not np.array_equal(w.numpy(), b)]
            if changed:
                raise SystemExit(f"book loop: the combined update changed D's weights ({', '.join(changed)})")
        if not traced:
            D.trainable = True
            traced.append(True)
        return float(np.mean([d_real, d_fake])), float(g_loss)

    return step


DIFFERENCES = {
    "book": "book: D sees real and fake in two train_on_batch calls, G's images come back to the host "
    "(predict) and run through G again in the combined model; no label noise",
    "keras_io": "keras-io: D on one concatenated batch of 2x batch with G's forward pass outside D's tape, "
    "label noise 0.05 on both classes; ours: D's real and generated halves as two passes of the batch "
    "(the label noise our params ask for, 0 here)",
}


class FitGAN:
    """keras-io's approach on our networks (written for this benchmark, not copied): `fit` runs
    `train_step` over a tf.data pipeline; everything random comes from TensorFlow's own ops."""

    @staticmethod
    def build(G, D, latent_dim: int, lr: float):
        import keras
        import tensorflow as tf

        bce = keras.losses.BinaryCrossentropy()

        class Gan(keras.Model):
            def __init__(self):
                super().__init__()
                self.generator, self.discriminator = G, D

            def train_step(self, real):
                n = tf.shape(real)[0]
                made = self.generator(tf.random.normal((n, latent_dim)), training=True)
                # fake -> 1, real -> 0 (the example's convention), jittered
                target = tf.concat([tf.ones((n, 1)), tf.zeros((n, 1))], axis=0)
                target += 0.05 * tf.random.uniform(tf.shape(target))
                with tf.GradientTape() as tape:
                    d_loss = bce(target, self.discriminator(tf.concat([made, real], 0), training=True))
                d_vars = self.discriminator.trainable_weights
                self.d_opt.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars, strict=True))
                with tf.GradientTape() as tape:
                    made = self.generator(tf.random.normal((n, latent_dim)), training=True)
                    g_loss = bce(tf.zeros((n, 1)), self.discriminator(made, training=True))
                g_vars = self.generator.trainable_weights
                self.g_opt.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars, strict=True))
                return {"d_loss": d_loss, "g_loss": g_loss}

        gan = Gan()
        gan.d_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
        gan.g_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
        gan.compile()
        return gan


def keras_io_seconds(G, D, x: np.ndarray, latent_dim: int, batch: int, lr: float, steps: int) -> float:
    """Seconds of one `fit` call of `steps` steps, after an untimed `fit` of the warm-up steps."""
    import tensorflow as tf

    gan = FitGAN.build(G, D, latent_dim, lr)
    data = tf.data.Dataset.from_tensor_slices(x).shuffle(1024, seed=0).repeat()
    data = data.batch(batch, drop_remainder=True).prefetch(32)
    gan.fit(data, epochs=1, steps_per_epoch=WARMUP, verbose=0, shuffle=False)
    t0 = time.perf_counter()
    gan.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - t0


def compiled_loop(G, D, x: np.ndarray, latent_dim: int, batch: int, lr: float):
    recipe = Recipe(latent_dim=latent_dim)
    g_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    d_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    train_step = make_train_step(G, D, g_opt, d_opt, recipe)

    def step(i):
        out = train_step(draw_batch(x, None, recipe, batch, 0, i))
        return float(out["d_loss"]), float(out["g_loss"])  # wait for the step, as the loop does

    return step


def grouped_seconds(G, D, x: np.ndarray, latent_dim: int, batch: int, lr: float, steps: int, k: int):
    """Seconds of `steps` (a multiple of `k`) steps of make_train_step's updates run `k` per
    tf.function call, the same host-drawn batches, after an untimed warm-up call."""
    import tensorflow as tf

    recipe = Recipe(latent_dim=latent_dim)
    g_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    d_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    one = make_train_step(G, D, g_opt, d_opt, recipe).python_function

    @tf.function
    def several(stacked):
        losses = [one({name: v[m] for name, v in stacked.items()})["d_loss"] for m in range(k)]
        return tf.stack(losses)

    def stacked(first: int) -> dict[str, np.ndarray]:
        draws = [draw_batch(x, None, recipe, batch, 0, first + m) for m in range(k)]
        return {name: np.stack([d[name] for d in draws]) for name in draws[0]}

    several(stacked(0)).numpy()  # traces, not timed
    t0 = time.perf_counter()
    for first in range(k, k + steps, k):
        several(stacked(first)).numpy()  # wait for the call, as the loop does
    return time.perf_counter() - t0


def timed(step, steps: int, **warmup) -> float:
    for i in range(WARMUP):
        step(i, **warmup)
    t0 = time.perf_counter()
    for i in range(steps):
        step(WARMUP + i)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="gan", choices=("gan", "dcgan"), help="sizes of this demo")
    ap.add_argument("--arch", choices=sorted(ARCHITECTURES), help="networks (default: the demo's)")
    ap.add_argument("--side", type=int, default=28, help="image side (MNIST: 28)")
    ap.add_argument("--width", type=float, help="network width (default: the demo's)")
    ap.add_argument("--latent-dim", type=int, help="default: the demo's")
    ap.add_argument("--batch", type=int, help="default: the demo's")
    ap.add_argument("--steps", type=int, default=60, help="steps timed per loop")
    ap.add_argument("--per-call", type=int, default=10, help="steps per call of the grouped variant")
    args = ap.parse_args()
    args.steps = max(args.per_call, args.steps // args.per_call * args.per_call)

    from models.core.registry import get

    demo = get(args.demo).profile_params("demo")
    args.arch = args.arch or demo.architecture()
    args.width = args.width or demo.width
    args.latent_dim = args.latent_dim or demo.latent_dim
    args.batch = args.batch or demo.batch_size
    if ARCHITECTURES[args.arch].conditional:
        ap.error("the book's loop here is unconditional: pick another --arch")
    shape = (args.side, args.side, 1)
    x = np.random.default_rng(1).uniform(-1, 1, (4096, *shape)).astype(np.float32)
    lr = demo.g_learning_rate
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    params = G.count_params() + D.count_params()
    compiled_s = timed(compiled_loop(G, D, x, args.latent_dim, args.batch, lr), args.steps)
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    book = book_loop(G, D, x, args.latent_dim, args.batch, lr)
    book_s = timed(book, args.steps, check=True)  # the warm-up checks D stays frozen
    book(0, check=True)  # ... and once more after the timed steps
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    keras_io_s = keras_io_seconds(G, D, x, args.latent_dim, args.batch, lr, args.steps)
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    grouped_s = grouped_seconds(G, D, x, args.latent_dim, args.batch, lr, args.steps, args.per_call)
    print(
        f"{args.demo} demo: {args.arch} x{args.width} ({params} parameters), latent {args.latent_dim}, "
        f"batch {args.batch}, {args.side}x{args.side}"
    )
    rows = [("book loop", book_s), ("keras-io fit", keras_io_s), ("compiled step", compiled_s)]
    for name, seconds in [*rows, (f"{args.per_call} per call", grouped_s)]:
        rate, ms = args.steps / seconds, 1000 * seconds / args.steps
        print(f"{name + ':':15}{rate:7.1f} steps/s ({ms:.1f} ms/step)")
    print(f"ours vs book: {book_s / compiled_s:.2f}x; ours vs keras-io: {keras_io_s / compiled_s:.2f}x")
    print(f"{args.per_call} steps per call vs one per call: {compiled_s / grouped_s:.2f}x")
    for note in DIFFERENCES.values():
        print(f"  not the same update: {note}")
    print(
        json.dumps(
            {
                "demo": args.demo,
                "arch": args.arch,
                "width": args.width,
                "batch": args.batch,
                "steps": args.steps,
                "book_steps_per_s": round(args.steps / book_s, 2),
                "keras_io_steps_per_s": round(args.steps / keras_io_s, 2),
                "compiled_steps_per_s": round(args.steps / compiled_s, 2),
                "compiled_vs_book": round(book_s / compiled_s, 2),
                "compiled_vs_keras_io": round(keras_io_s / compiled_s, 2),
                "per_call": args.per_call,
                "grouped_steps_per_s": round(args.steps / grouped_s, 2),
                "grouped_vs_compiled": round(compiled_s / grouped_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
