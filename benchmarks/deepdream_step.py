"""deepdream, side by side in one run: our compiled ascent step vs an eager per-step loop.

Both run the same steps on the same image through the same feature model (the offline ImageNet
MobileNetV2 with the demo's layers, or random weights with --random-weights):
  eager     GradientTape and the update run op by op in Python each step (what the book's
            `K.function` loop becomes in TensorFlow 2 without `tf.function`)
  compiled  models.techniques.deepdream.make_ascent_step: one tf.function traced once for every octave size
Each is timed over the demo's octave sizes after one untimed warm-up step per size (the compiled
step traces once, on the first); the images they end with are compared too.

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

from models.inputs import offline  # noqa: E402
from models.inputs.catalog import get_dataset
from models.techniques.deepdream import DEMO, dream_loss, make_ascent_step, octave_shapes, resize_float  # noqa: E402


def eager_step(features, layers, border: int, step: float):
    """The same ascent step, not compiled."""
    import tensorflow as tf

    def ascent(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = dream_loss(features(image), layers, border)
        grads = tape.gradient(loss, image)
        grads /= tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-7)
        return loss, image + step * grads

    return ascent


def run(ascent, images: list[np.ndarray], steps: int) -> tuple[float, list[np.ndarray]]:
    """Seconds for `steps` steps on each image (after one untimed warm-up step per image)."""
    import tensorflow as tf

    ends = []
    for image in images:
        ascent(tf.constant(image[None]))  # warm-up: traces the compiled step, builds eager kernels
    t0 = time.perf_counter()
    for image in images:
        x = tf.constant(image[None])
        for _ in range(steps):
            loss, x = ascent(x)
        float(loss)  # wait for the last step
        ends.append(x.numpy()[0])
    return time.perf_counter() - t0, ends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-side", type=int, default=DEMO["max_side"], help="longest side of the photo")
    ap.add_argument("--steps", type=int, default=DEMO["iterations"], help="steps per octave")
    ap.add_argument("--num-octave", type=int, default=3)
    ap.add_argument("--random-weights", action="store_true", help="skip reading the ImageNet weights")
    args = ap.parse_args()

    from _data import offline_mobilenet_v2_path

    from models.core.images import load_image, resize
    from models.toolkit.backbones import feature_model, load_backbone, preprocess

    dataset = get_dataset("chelsea")
    photo = resize(
        load_image(offline.load(dataset.offline.loader, dataset.offline.args)), max_side=args.max_side
    )
    weights = None if args.random_weights else offline_mobilenet_v2_path()
    backbone, described = load_backbone("mobilenet_v2", weights)
    layers = DEMO["layers"]
    features = feature_model(backbone, list(layers))
    x = preprocess("mobilenet_v2", photo)
    shapes = octave_shapes(x.shape[:2], args.num_octave, 1.4)
    images = [resize_float(x, s) for s in shapes]
    print(f"{described}; octaves {shapes}, {args.steps} steps each")

    compiled = make_ascent_step(features, layers, 2, DEMO["step_size"])
    compiled_s, compiled_ends = run(compiled, images, args.steps)
    eager_s, eager_ends = run(eager_step(features, layers, 2, DEMO["step_size"]), images, args.steps)
    n = args.steps * len(images)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(compiled_ends, eager_ends, strict=True))
    mean_diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(compiled_ends, eager_ends, strict=True)]))
    change = float(np.mean([np.abs(a - b).mean() for a, b in zip(compiled_ends, images, strict=True)]))
    print(f"eager loop:    {eager_s:.2f} s ({1000 * eager_s / n:.0f} ms/step)")
    print(
        f"compiled step: {compiled_s:.2f} s ({1000 * compiled_s / n:.0f} ms/step), "
        f"{eager_s / compiled_s:.2f}x faster, traced {compiled.experimental_get_tracing_count()} time(s)"
    )
    print(
        f"compiled vs eager final images: largest difference {diff:.2e}, mean {mean_diff:.2e} "
        f"(preprocessed units; the dream moved them by {change:.2e} on average)"
    )
    print(
        json.dumps(
            {
                "shapes": shapes,
                "steps": n,
                "eager_s": round(eager_s, 3),
                "compiled_s": round(compiled_s, 3),
                "eager_ms_per_step": round(1000 * eager_s / n, 1),
                "compiled_ms_per_step": round(1000 * compiled_s / n, 1),
                "compiled_vs_eager": round(eager_s / compiled_s, 2),
                "traces": int(compiled.experimental_get_tracing_count()),
                "max_abs_diff": diff,
                "mean_abs_diff": mean_diff,
                "mean_abs_change": change,
            }
        )
    )


if __name__ == "__main__":
    main()
