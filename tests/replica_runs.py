"""Tiny trainings on N replicas, each in a process of its own (tests/test_replicas.py runs them):
logical CPU devices can only be made before TensorFlow starts, so a run that needs two cannot
share the test process. Prints one JSON line: the loss history and the devices used.

    python tests/replica_runs.py gan OUT REPLICAS STEPS [STOP_AT]
    python tests/replica_runs.py text_lstm OUT REPLICAS EPOCHS [STOP_AT]
    python tests/replica_runs.py vae OUT REPLICAS EPOCHS

STOP_AT interrupts the run there (an exception after that step's or epoch's progress report),
leaving the checkpoints a re-run resumes from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GAN_BATCH = 8  # global batch: 4 images per replica on two
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 8


class Interrupted(Exception):
    pass


def mirrored(variable) -> int:
    """How many devices hold a copy of this variable (1: not mirrored)."""
    return len(getattr(variable.value, "values", [None]))


def gan(out: Path, replicas: int, steps: int, stop_at: int = 0) -> dict:
    import keras
    import numpy as np

    from models.techniques.gan.networks import ARCHITECTURES
    from models.techniques.gan.trainer import Recipe, make_optimizer, train_adversarial
    from models.toolkit.distribute import data_parallel
    from models.toolkit.training import configure_runtime

    device = configure_runtime("cpu", False, print)
    rep = data_parallel(replicas, device, GAN_BATCH)
    recipe = Recipe(latent_dim=4, label_noise=0.1)
    x = np.random.default_rng(0).uniform(-1, 1, (40, 8, 8, 1)).astype(np.float32)
    keras.utils.set_random_seed(3)
    with rep.scope():
        # The vanilla GAN's networks: batch norm in G, so unsynchronised statistics would show.
        G, D = ARCHITECTURES["cookbook_dense"].build(x.shape[1:], recipe.latent_dim, 0.05, 0)
        g_opt, d_opt = (make_optimizer("adam", 1e-3, 0.5, 0.999, None) for _ in range(2))

    def snapshot(i: int) -> None:
        if stop_at and i + 1 == stop_at:
            raise Interrupted

    try:
        result = train_adversarial(
            G=G, D=D, g_opt=g_opt, d_opt=d_opt, recipe=recipe, x=x, y=None, batch_size=GAN_BATCH,
            steps=steps, seed=7, ckpt_dir=out, fingerprint="replicas", checkpoint_every=2,
            snapshot_every=1, snapshot=snapshot, log=lambda m: None, replicas=rep,
        )  # fmt: skip
    except Interrupted:
        return {"interrupted": True}
    return {**result, "mirrored": mirrored(G.weights[0])}


def text_lstm(out: Path, replicas: int, epochs: int, stop_at: int = 0) -> dict:
    from models.core.files import digest_json
    from models.core.registry import StepContext, get

    t = get("text_lstm")
    # 64 windows a batch, every batch full: two replicas get 32 each.
    p = t.params_model(**{**t.tiny_overrides, "epochs": epochs, "replicas": replicas, "device": "cpu"})
    p = p.model_copy(update={"validation_split": 0.0, "epoch_sample_length": 0})
    raw, proc, ckpt = out / "raw", out / "proc", out / "ckpt"
    for d in (raw, proc, ckpt):
        d.mkdir(parents=True, exist_ok=True)
    (raw / "corpus.txt").write_text(TEXT[: 3 * 64 * 3 + p.maxlen], encoding="utf-8")
    t.vectorize(p, StepContext({}, proc, inputs={"corpus": raw / "corpus.txt"}, log=lambda m: None))

    def progress(done, total, logs) -> None:
        if stop_at and done == stop_at:  # epoch `stop_at` is checkpointed: interrupt here
            raise Interrupted

    key = digest_json(p.subset("train"))
    ctx = StepContext({"vectorize": proc}, ckpt, key=key, progress=progress, log=lambda m: None)
    try:
        metrics = t.train(p, ctx)
    except Interrupted:
        return {"interrupted": True}
    history = json.loads((ckpt / "metrics.json").read_text())["history"]
    from models.toolkit.training import FINAL, load_model

    return {**metrics, "history": {"loss": history["loss"]}, "saved": (ckpt / FINAL).is_file()} | {
        "parameters_loaded": int(load_model(ckpt / FINAL).count_params())
    }


def vae(out: Path, replicas: int, epochs: int) -> dict:
    """The VAE's own train_step and sampling layer through fit_resumable (a loss averaged per
    replica, noise drawn per replica would both show)."""
    import numpy as np

    from models.techniques.vae.networks import build_vae
    from models.techniques.vae.technique import VAEParams, _batches
    from models.toolkit.distribute import data_parallel
    from models.toolkit.training import configure_runtime, fit_resumable

    p = VAEParams(variant="dense", hidden_units=16, seed=1, batch_size=16, replicas=replicas)
    rep = data_parallel(replicas, configure_runtime("cpu", False, print), 16)
    x = (np.random.default_rng(0).random((48, 28, 28, 1)) > 0.7).astype(np.float32)
    return fit_resumable(
        ckpt_dir=out, fingerprint="replicas", epochs=epochs,
        build_model=lambda: build_vae(p, (28, 28, 1)),
        train_data=lambda epoch: _batches(x, 16, shuffle_seed=epoch), val_data=None,
        samples_per_epoch=len(x), progress=lambda *a: None, log=lambda m: None, replicas=rep,
    )  # fmt: skip


if __name__ == "__main__":
    kind, out, replicas, count, *rest = sys.argv[1:]
    run = {"gan": gan, "text_lstm": text_lstm, "vae": vae}[kind]
    result = run(Path(out), int(replicas), int(count), *map(int, rest))
    print(json.dumps({k: v for k, v in result.items() if k != "resumed"}, default=str))
