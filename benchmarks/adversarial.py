"""adversarial: the compiled attack step against the same step run eagerly, one call per step.

Both run the targeted attack of models/techniques/adversarial.py (the demo's sign step towards class 386)
on chelsea's eval crop with the offline ImageNet MobileNetV2, from the same start, for the same
number of steps:
  compiled  `targeted_step`: one tf.function (gradient, step, projection), traced once
  eager     the same arithmetic in eager mode: GradientTape and numpy-side ops every step
The first compiled call (tracing) is timed on its own. Both should end on nearly the same image:
graph and eager kernels round differently, and the sign of a gradient that is ~0 can flip, so
the share of pixels that differ (by one step) and both final p(target) are printed too.

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
from _data import offline_mobilenet_v2_path  # noqa: E402

from models.core.images import load_image  # noqa: E402
from models.inputs.offline import packaged_file  # noqa: E402
from models.techniques.adversarial import (  # noqa: E402
    DEMO,
    AdversarialParams,
    load_classifier,
    targeted_step,
)
from models.toolkit.backbones import eval_crop, pixel_bounds, preprocess  # noqa: E402


def eager_step(model, image, original, p: AdversarialParams):
    """The attack step without tf.function: what a book-style Python loop does each step."""
    import tensorflow as tf

    low, high = pixel_bounds(p.backbone)
    lower = np.maximum(original - p.epsilon, low)
    upper = np.minimum(original + p.epsilon, high)

    def step(_):
        with tf.GradientTape() as tape:
            probs = model(image, training=False)
            p_target = probs[0, p.target_class]
            objective = tf.math.log(p_target + 1e-30)
        grad = tape.gradient(objective, image)
        if float(p_target) < p.threshold:
            image.assign(np.clip(image.numpy() + p.step_size * np.sign(grad.numpy()), lower, upper))
        return {"p_target": float(p_target)}

    return step


def run(step, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        float(step(np.int64(i))["p_target"])  # wait for the step, as the attack loop does
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="side of the eval crop (MobileNetV2: 224)")
    ap.add_argument("--steps", type=int, default=10, help="attack steps timed per variant")
    args = ap.parse_args()

    import keras

    # threshold 1: no early stop, so both variants do the same number of full steps
    p = AdversarialParams(**{**DEMO, "threshold": 1.0})
    photo = eval_crop(load_image(packaged_file("skimage", "data/chelsea.png")), args.size)
    original = preprocess(p.backbone, photo)[None].astype(np.float32)
    model, _ = load_classifier(p, offline_mobilenet_v2_path(), args.size)

    image = keras.Variable(original, name="compiled")
    compiled = targeted_step(model, image, original, p, jit_compile=False)
    start = time.perf_counter()
    compiled(np.int64(0))
    trace = time.perf_counter() - start
    image.assign(original)
    compiled_s = run(compiled, args.steps)
    compiled_image = image.numpy()

    image.assign(original)
    eager = eager_step(model, image, original, p)
    eager(np.int64(0))  # warm-up, like the compiled variant's trace
    image.assign(original)
    eager_s = run(eager, args.steps)
    eager_image = image.numpy()
    differing = float(np.mean(np.abs(eager_image - compiled_image) > 1e-6))

    def p_target(x):
        return float(np.asarray(model(x, training=False))[0, p.target_class])

    print(f"size {args.size}, {args.steps} steps, threads {os.cpu_count()}")
    print(f"compiled: trace {trace:.2f} s, then {compiled_s / args.steps * 1000:.1f} ms/step")
    print(f"eager:    {eager_s / args.steps * 1000:.1f} ms/step")
    print(
        f"final p(target): compiled {p_target(compiled_image):.4g}, eager {p_target(eager_image):.4g}; "
        f"{differing:.2%} of the values differ"
    )
    print(
        json.dumps(
            {
                "size": args.size,
                "steps": args.steps,
                "trace_s": round(trace, 3),
                "compiled_ms_per_step": round(compiled_s / args.steps * 1000, 2),
                "eager_ms_per_step": round(eager_s / args.steps * 1000, 2),
                "compiled_vs_eager": round(eager_s / compiled_s, 3),
                "p_target_compiled": p_target(compiled_image),
                "p_target_eager": p_target(eager_image),
                "differing_fraction": differing,
            }
        )
    )


if __name__ == "__main__":
    main()
