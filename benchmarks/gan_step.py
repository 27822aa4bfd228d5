"""GAN training, side by side in one run: our compiled step vs the books' Keras loop.

Both train the same networks (the same initial weights) on the same batch size:
  book      generator.predict(noise), D.train_on_batch on the real batch and on the generated
            batch, then the combined model's (G -> frozen D) train_on_batch: four Keras calls, two
            host round trips of images per step (Vasilev's and the Cookbook's loops). The books
            freeze D in the combined model; Keras 3 reads `trainable` when a model's train
            function is first traced (not at compile), so D is frozen for the combined model's
            first call, and the warm-up checks that D's weights stay unchanged by it.
  compiled  make_train_step (models/techniques/gan/): D's and G's updates in one tf.function,
            with the batch's randomness drawn on the host (draw_batch) as the pipeline does
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


def compiled_loop(G, D, x: np.ndarray, latent_dim: int, batch: int, lr: float):
    recipe = Recipe(latent_dim=latent_dim)
    g_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    d_opt = make_optimizer("adam", lr, 0.5, 0.999, None)
    train_step = make_train_step(G, D, g_opt, d_opt, recipe)

    def step(i):
        out = train_step(draw_batch(x, None, recipe, batch, 0, i))
        return float(out["d_loss"]), float(out["g_loss"])  # wait for the step, as the loop does

    return step


def timed(step, steps: int, **warmup) -> float:
    for i in range(WARMUP):
        step(i, **warmup)
    t0 = time.perf_counter()
    for i in range(steps):
        step(WARMUP + i)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vasilev_dcgan", choices=sorted(ARCHITECTURES))
    ap.add_argument("--side", type=int, default=28, help="image side (MNIST: 28)")
    ap.add_argument("--width", type=float, default=0.25, help="network width (the dcgan demo's: 0.25)")
    ap.add_argument("--latent-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="steps timed per loop")
    args = ap.parse_args()

    if ARCHITECTURES[args.arch].conditional:
        ap.error("the book's loop here is unconditional: pick another --arch")
    shape = (args.side, args.side, 1)
    x = np.random.default_rng(1).uniform(-1, 1, (512, *shape)).astype(np.float32)
    lr = 2e-4
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    params = G.count_params() + D.count_params()
    compiled_s = timed(compiled_loop(G, D, x, args.latent_dim, args.batch, lr), args.steps)
    G, D = networks(args.arch, shape, args.latent_dim, args.width, 0)
    book = book_loop(G, D, x, args.latent_dim, args.batch, lr)
    book_s = timed(book, args.steps, check=True)  # the warm-up checks D stays frozen
    book(0, check=True)  # ... and once more after the timed steps
    print(f"{args.arch} x{args.width} ({params} parameters), batch {args.batch}, {args.side}x{args.side}")
    print(f"book loop:     {args.steps / book_s:.1f} steps/s ({1000 * book_s / args.steps:.0f} ms/step)")
    print(
        f"compiled step: {args.steps / compiled_s:.1f} steps/s "
        f"({1000 * compiled_s / args.steps:.0f} ms/step), {book_s / compiled_s:.2f}x the book's"
    )
    print(
        json.dumps(
            {
                "arch": args.arch,
                "width": args.width,
                "batch": args.batch,
                "steps": args.steps,
                "book_steps_per_s": round(args.steps / book_s, 2),
                "compiled_steps_per_s": round(args.steps / compiled_s, 2),
                "compiled_vs_book": round(book_s / compiled_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
