"""cyclegan and pix2pix, side by side in one run: our compiled training steps vs the book-style
`train_on_batch` loops, on the same networks and batches.

  book      Vasilev's CycleGAN loop in Keras: G(a) and F(b) by `predict`, each discriminator
            trained by two `train_on_batch` calls (real, fake), then a combined model (both
            generators, frozen discriminators; MSE, MAE x lambda_cycle, MAE x lambda_id) by one
            more; pix2pix the same way (one discriminator on stacked pairs, combined model with
            the adversarial loss + 100 x L1). No history pool (the book leaves it out).
  compiled  make_train_step of models/techniques/translation/cyclegan.py and pix2pix.py: one
            tf.function per step, both networks' updates from one forward pass, the pool included.
Both are timed after an untimed warm-up step (tracing); the same random batches for both.

The two sides are not the same algorithm, and the run prints how (DIFFERENCES): the ratio is
the speed of a step, not of an identical update.

The last line printed is one JSON object with the timings and the ratios.
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

from models.techniques.translation import cyclegan, pix2pix  # noqa: E402

DIFFERENCES = {
    "cyclegan": "book: the discriminators update first (on the generators' `predict` output), then the "
    "generators update against the UPDATED discriminators, running again in the combined model; "
    "compiled: the generators run once, their loss is taken against the discriminators BEFORE "
    "their update, the discriminators judge the history pool's fakes from that same pass, and both "
    "updates are applied at the end of the step",
    "pix2pix": "book: D updates on (source, target) and (source, predict(source)), then the combined "
    "model runs G again against the updated D; compiled: one forward pass of G and of D (real and "
    "generated pairs as one batch) feeds both updates",
}


def _adam(p):
    import keras

    return keras.optimizers.Adam(p.learning_rate, beta_1=p.beta_1)


def book_cyclegan(gan: cyclegan.CycleGAN, p: cyclegan.CycleGANParams):
    """Vasilev's loop, on our networks."""
    import keras

    for d in (gan.d_a, gan.d_b):
        d.compile(loss="mse", optimizer=_adam(p))
    img_a = keras.Input(gan.g_ab.input_shape[1:])
    img_b = keras.Input(gan.g_ab.input_shape[1:])
    fake_b, fake_a = gan.g_ab(img_a), gan.g_ba(img_b)
    outputs = [
        gan.d_a(fake_a),
        gan.d_b(fake_b),
        gan.g_ba(fake_b),
        gan.g_ab(fake_a),
        gan.g_ba(img_a),
        gan.g_ab(img_b),
    ]
    combined = keras.Model([img_a, img_b], outputs)
    for d in (gan.d_a, gan.d_b):
        d.trainable = False  # frozen inside the combined model only: it was compiled trainable
    combined.compile(
        loss=["mse", "mse", "mae", "mae", "mae", "mae"],
        loss_weights=[1, 1, p.lambda_cycle, p.lambda_cycle, p.lambda_id, p.lambda_id],
        optimizer=_adam(p),
    )
    patch = gan.d_a.output_shape[1:]

    def step(a, b):
        valid, fake = np.ones((len(a), *patch), np.float32), np.zeros((len(a), *patch), np.float32)
        fb, fa = gan.g_ab.predict(a, verbose=0), gan.g_ba.predict(b, verbose=0)
        for d, real, made in ((gan.d_a, a, fa), (gan.d_b, b, fb)):
            d.trainable = True
            d.train_on_batch(real, valid)
            d.train_on_batch(made, fake)
            d.trainable = False
        return combined.train_on_batch([a, b], [valid, valid, a, b, a, b])

    return step


def book_pix2pix(gan: pix2pix.Pix2Pix, p: pix2pix.Pix2PixParams):
    """The same pattern for pix2pix: a conditional discriminator on stacked pairs."""
    import keras

    g, d = gan.generator, gan.discriminator
    d.compile(loss="binary_crossentropy", optimizer=_adam(p))
    source = keras.Input(g.input_shape[1:])
    fake = g(source)
    judged = keras.layers.Activation("sigmoid")(d(keras.layers.Concatenate()([source, fake])))
    combined = keras.Model(source, [judged, fake])
    d.trainable = False
    combined.compile(loss=["binary_crossentropy", "mae"], loss_weights=[1, p.lambda_l1], optimizer=_adam(p))
    patch = d.output_shape[1:]
    # The discriminator outputs logits: its own loss is computed on sigmoid(logits) through a wrapper.
    real_in = keras.Input(d.input_shape[1:])
    d_prob = keras.Model(real_in, keras.layers.Activation("sigmoid")(d(real_in)))
    d.trainable = True
    d_prob.compile(loss="binary_crossentropy", optimizer=_adam(p))

    def step(a, b):
        valid, fake_label = np.ones((len(a), *patch), np.float32), np.zeros((len(a), *patch), np.float32)
        made = g.predict(a, verbose=0)
        d_prob.train_on_batch(np.concatenate([a, b], -1), valid)
        d_prob.train_on_batch(np.concatenate([a, made], -1), fake_label)
        d.trainable = False
        loss = combined.train_on_batch(a, [valid, b])
        d.trainable = True
        return loss

    return step


def timed(step, batches) -> float:
    step(*batches[0])  # warm-up: traces
    t0 = time.perf_counter()
    for a, b in batches[1:]:
        out = step(a, b)
    if isinstance(out, dict):
        float(out[next(iter(out))])  # wait for the last compiled step
    return (len(batches) - 1) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demo = cyclegan.DEMO
    ap.add_argument("--size", type=int, default=demo["image_size"])
    ap.add_argument("--gf", type=int, default=demo["gf"])
    ap.add_argument("--df", type=int, default=demo["df"])
    ap.add_argument("--batch", type=int, default=demo["batch_size"])
    ap.add_argument("--steps", type=int, default=30, help="timed steps of each loop")
    args = ap.parse_args()

    import tensorflow as tf

    shared = {"image_size": args.size, "gf": args.gf, "df": args.df, "batch_size": args.batch}
    rng = np.random.default_rng(0)
    batches = [
        tuple(rng.uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32) for _ in range(2))
        for _ in range(args.steps + 1)
    ]
    print(f"{args.size}px, gf={args.gf}, df={args.df}, batch {args.batch}, {args.steps} timed steps each")
    result = {"size": args.size, "gf": args.gf, "df": args.df, "batch": args.batch, "steps": args.steps}

    p = cyclegan.CycleGANParams(**shared)
    gan = cyclegan.CycleGAN(p)
    compiled = cyclegan.make_train_step(gan, p)
    counter = iter(range(10**9))
    rates = {
        "compiled": timed(
            lambda a, b: compiled(tf.constant(a), tf.constant(b), tf.constant(next(counter), tf.int64)),
            batches,
        ),
        "book": timed(book_cyclegan(cyclegan.CycleGAN(p), p), batches),
    }
    print(f"cyclegan: book loop {rates['book']:.2f} steps/s, compiled step {rates['compiled']:.2f} steps/s")
    print(f"  not the same algorithm: {DIFFERENCES['cyclegan']}")
    result.update({f"cyclegan_{k}_steps_per_s": round(v, 3) for k, v in rates.items()})
    result["cyclegan_compiled_vs_book"] = round(rates["compiled"] / rates["book"], 2)

    q = pix2pix.Pix2PixParams(**shared)
    gan2 = pix2pix.Pix2Pix(q)
    compiled2 = pix2pix.make_train_step(gan2, q)
    rates = {
        "compiled": timed(lambda a, b: compiled2(tf.constant(a), tf.constant(b)), batches),
        "book": timed(book_pix2pix(pix2pix.Pix2Pix(q), q), batches),
    }
    print(f"pix2pix: book loop {rates['book']:.2f} steps/s, compiled step {rates['compiled']:.2f} steps/s")
    print(f"  not the same algorithm: {DIFFERENCES['pix2pix']}")
    result.update({f"pix2pix_{k}_steps_per_s": round(v, 3) for k, v in rates.items()})
    result["pix2pix_compiled_vs_book"] = round(rates["compiled"] / rates["book"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
