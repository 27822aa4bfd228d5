"""Character-level LSTM text generation (Chollet, Deep Learning with Python, section 8.1).

Data: a lower-cased corpus cut into windows of `maxlen` characters every `stride` characters, each
followed by the character to predict. Model: LSTM(128) -> Dense(softmax). Sampling: reweight the
next-character distribution by a temperature, draw, append, slide the window.

Unlike the book, the corpus is kept as one array of character indices; windows and their one-hot
encoding are made on the fly in the tf.data pipeline (the book's dense boolean array for
Nietzsche is 200,278 x 60 x 57 = 684 MB). Sampling is one compiled loop, batched across
temperatures, instead of a `model.predict` call per character.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from models.core.errors import GdlError
from models.core.files import numbered_files, write_json_atomic
from models.core.memory import FLOAT
from models.core.params import DataParallelParams, param, source_param
from models.core.registry import Input, Rehearsal, StepContext, Technique, register
from models.inputs.formats import decode_text
from models.reporting.quality import Check, Quality
from models.reporting.report import Curve, Note, Report, Table, Text
from models.techniques.text_sampler import TextSampler
from models.toolkit.distribute import data_parallel
from models.toolkit.training import FINAL, configure_runtime, fit_resumable, load_model

CORPUS, VOCAB, META = "corpus.npy", "vocab.json", "meta.json"
SAMPLES_JSON = "samples.json"
MAX_SAMPLE = 1_000_000  # characters per temperature: the sampler holds them all in memory
EPOCH_WEIGHTS = "epochs"  # per-epoch weights, sampled by the sample step (the book's per-epoch text)


MIN_TEMPERATURE = 0.01  # sampling at 0.01 is already argmax in all but ties


class TextLSTMParams(DataParallelParams):
    dataset: str = param("nietzsche", "download", "Dataset name in the catalog (Chollet 8.1).")
    source: str = source_param("the dataset", remote="the book's URL", offline="a packaged stand-in")
    max_chars: int | None = param(
        None, "vectorize", "Use only the first N characters of the corpus (null: all).", ge=1
    )
    normalize: bool = param(
        False,
        "vectorize",
        "Collapse the corpus's runs of spaces, blank lines and ruled-line characters (- = * ~ beyond "
        "3) before training, so samples cannot learn long runs of one character (the book: off).",
    )
    maxlen: int = param(60, "vectorize", "Characters per input window (Chollet 8.1: 60).", ge=1)
    stride: int = param(3, "vectorize", "Stride between window starts (Chollet 8.1: 3).", ge=1)
    validation_split: float = param(
        0.05,
        "vectorize",
        "Fraction of windows, taken from the end of the corpus, held out for validation (the book has none).",
        ge=0.0,
        lt=0.9,
    )
    lstm_units: int = param(128, "train", "Units of the LSTM layer (Chollet 8.1: 128).", ge=1)
    unroll: bool = param(False, "train", "Unroll the LSTM over the window: faster on CPU for short windows.")
    learning_rate: float = param(0.01, "train", "RMSprop learning rate (Chollet 8.1: 0.01).", gt=0)
    batch_size: int = param(128, "train", "Windows per batch (Chollet 8.1: 128).", ge=1)
    epochs: int = param(60, "train", "Training epochs, one fit call each (Chollet 8.1: 60).", ge=1)
    temperatures: list[float] = param(
        [0.2, 0.5, 1.0, 1.2],
        "sample",
        "Sampling temperatures, each >= 0.01, distinct (Chollet 8.1: 0.2, 0.5, 1.0, 1.2).",
    )
    sample_length: int = param(
        400, "sample", "Characters generated per temperature (Chollet 8.1: 400).", ge=1, le=MAX_SAMPLE
    )
    epoch_sample_length: int = param(
        400,
        "sample",
        "Characters generated per temperature from each epoch's weights, to show the text improve "
        "(Chollet 8.1 samples after every epoch: 400); 0 samples only the final model.",
        ge=0,
        le=MAX_SAMPLE,
    )
    sampler: Literal["window", "stateful"] = param(
        "window",
        "sample",
        "window: the book's semantics (softmax on the last maxlen characters); stateful: carry "
        "the LSTM state from character to character (much faster, unbounded context).",
    )

    @field_validator("temperatures")
    @classmethod
    def _positive_distinct(cls, temps: list[float]) -> list[float]:
        if not temps:
            raise ValueError("at least one temperature is required")
        if any(not math.isfinite(t) or t < MIN_TEMPERATURE for t in temps):
            # Below it logits / T overflow float32 (1e-300 drew out-of-range characters).
            raise ValueError(f"every temperature must be a finite number >= {MIN_TEMPERATURE}")
        if len(set(temps)) != len(temps):
            raise ValueError("temperatures must be distinct")
        return temps

    def memory_floor(self) -> tuple[int, dict[str, int]]:
        """Bytes a training step needs at the least (models/core/memory.py): the LSTM's recurrent
        kernel (four gates of units x units) with its gradient and RMSprop's slot, and one
        window's hidden states. Not the batch: fit never batches more windows than the corpus has."""
        needed = FLOAT * (3 * 4 * self.lstm_units * self.lstm_units + self.maxlen * self.lstm_units)
        return needed, {"lstm_units": self.lstm_units, "maxlen": self.maxlen}


DEMO = {
    # Offline and CPU-sized (about 2.5 minutes of training on 2 cores): the whole packaged corpus
    # (~430k characters once normalised), shorter windows every 6 characters, an unrolled LSTM,
    # 6 epochs. Measured: its first 200k characters every 4 over-fit (2.69 bits/char held out
    # after 6 epochs); all of it every 8: 2.54; every 6: 2.30.
    "source": "offline",
    "normalize": True,  # the packaged help text is full of indentation and table rules
    "maxlen": 40,
    "stride": 6,
    "unroll": True,
    "epochs": 6,
    "epoch_sample_length": 200,
}

TINY = {
    # Seconds on a CPU, every code path: what the tests run.
    "max_chars": 4000,
    "maxlen": 12,
    "stride": 3,
    "validation_split": 0.1,
    "lstm_units": 16,
    "unroll": False,
    "batch_size": 64,
    "epochs": 2,
    "sample_length": 40,
    "epoch_sample_length": 20,
}


# ---------------------------------------------------------------------------------------------
# Data


def split_starts(n_text: int, maxlen: int, step: int, validation_split: float):
    """Window start indices for training and validation.

    Starts follow the book (`range(0, len(text) - maxlen, step)`). The last `validation_split`
    of them are held out, and training windows whose target falls inside the held-out text are
    dropped, so no validation character is ever a training target.
    """
    starts = np.arange(0, n_text - maxlen, step, dtype=np.int64)
    n_val = int(round(len(starts) * validation_split))
    if validation_split > 0 and n_val == 0 and len(starts) > 1:
        n_val = 1
    train, val = starts[: len(starts) - n_val], starts[len(starts) - n_val :]
    if n_val:
        train = train[train + maxlen < val[0]]
    if len(train) == 0:
        raise GdlError(
            f"corpus of {n_text} characters leaves no training windows with maxlen={maxlen}, "
            f"step={step}, validation_split={validation_split}"
        )
    return train, val


BITS_PER_CHAR_FLOOR = 2.5  # the demo's floor on held-out bits per character
LONGEST_RUN_BOUND = 19  # no sample may repeat one character 20 times in a row
RULES = re.compile(r"([-=*~])\1{3,}")


def normalize_text(text: str) -> str:
    """Runs of spaces and tabs -> one space, no spaces around line ends, at most one blank line,
    and ruled lines (----, ====, ****, ~~~~) cut to three characters."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return RULES.sub(r"\1\1\1", text)


def longest_run(text: str) -> int:
    """The length of the longest run of one repeated character."""
    return max((len(m.group(0)) for m in re.finditer(r"(.)\1*", text, re.DOTALL)), default=0)


def encode(text: str) -> tuple[np.ndarray, list[str]]:
    """Character indices of `text` (into the sorted vocabulary) and the vocabulary."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab, ids = np.unique(codepoints, return_inverse=True)
    dtype = np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.uint32
    return ids.astype(dtype), [chr(c) for c in vocab]


def training_updates(p: TextLSTMParams, inputs: Mapping[str, Path]) -> int:
    """Optimizer steps of a run of these params on the downloaded corpus (the rehearsal's
    projection): epochs x batches of training windows."""
    n_text = len(decode_text(inputs["corpus"].read_bytes(), str(inputs["corpus"])))
    if p.max_chars:
        n_text = min(n_text, p.max_chars)
    train, _ = split_starts(n_text, p.maxlen, p.stride, p.validation_split)
    return p.epochs * math.ceil(len(train) / p.batch_size)


def vectorize(p: TextLSTMParams, ctx: StepContext) -> dict[str, Any]:
    raw = ctx.inputs["corpus"]
    text = decode_text(raw.read_bytes(), str(raw)).lower()
    if p.normalize:
        text = normalize_text(text)
    if p.max_chars:
        text = text[: p.max_chars]
    if len(text) < p.maxlen + 1:
        raise GdlError(
            f"corpus {raw} has {len(text)} characters; text_lstm needs at least maxlen + 1 = {p.maxlen + 1}"
        )
    ids, vocab = encode(text)
    train, val = split_starts(len(ids), p.maxlen, p.stride, p.validation_split)
    np.save(ctx.out / CORPUS, ids, allow_pickle=False)
    write_json_atomic(ctx.out / VOCAB, vocab)
    meta = {
        "characters": len(ids),
        "vocabulary": len(vocab),
        "sequences": len(range(0, len(ids) - p.maxlen, p.stride)),  # the book's count
        "train_sequences": len(train),
        "val_sequences": len(val),
        "maxlen": p.maxlen,
        "stride": p.stride,
    }
    write_json_atomic(ctx.out / META, meta)
    ctx.log(
        f"{meta['characters']} characters, {meta['vocabulary']} distinct, "
        f"{meta['sequences']} sequences ({meta['val_sequences']} held out)"
    )
    return meta


def load_corpus(processed: Path) -> tuple[np.ndarray, list[str]]:
    ids = np.load(processed / CORPUS, allow_pickle=False)
    vocab = json.loads((processed / VOCAB).read_text())
    return ids, vocab


# ---------------------------------------------------------------------------------------------
# Model and training


def build_model(
    maxlen: int,
    n_vocab: int,
    units: int,
    learning_rate: float,
    jit_compile: bool = False,
    unroll: bool = False,
):
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(maxlen, n_vocab)),
            keras.layers.LSTM(units, unroll=unroll),
            keras.layers.Dense(n_vocab, activation="softmax", dtype="float32"),
        ],
        name="text_lstm",
    )
    # Sparse targets give the same loss as the book's one-hot categorical cross-entropy.
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        jit_compile=jit_compile,
    )
    return model


def make_dataset(
    ids: np.ndarray,
    starts: np.ndarray,
    maxlen: int,
    n_vocab: int,
    batch_size: int,
    shuffle_seed: int | None = None,
):
    """Batches of (one-hot window, next-character index), cut from the index array on the fly."""
    import tensorflow as tf

    corpus = tf.constant(ids.astype(np.int32))
    offsets = tf.range(maxlen, dtype=tf.int64)

    def windows(s):
        x = tf.gather(corpus, s[:, None] + offsets)
        y = tf.gather(corpus, s + maxlen)
        return tf.one_hot(x, n_vocab), y

    ds = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(starts), seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds.batch(batch_size).map(windows, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def train(p: TextLSTMParams, ctx: StepContext) -> dict[str, Any]:
    import keras

    processed = ctx.upstream["vectorize"]
    device = configure_runtime(p.device, p.mixed_precision, ctx.log)
    replicas = data_parallel(p.replicas, device, p.batch_size)
    # The epochs' shuffles depend on TensorFlow's global seed too: set it on resume as well
    # (only building a new model did), or a resumed run in a fresh process shuffles otherwise.
    keras.utils.set_random_seed(p.seed)
    ids, vocab = load_corpus(processed)
    train_starts, val_starts = split_starts(len(ids), p.maxlen, p.stride, p.validation_split)

    def new_model():
        keras.utils.set_random_seed(p.seed)
        return build_model(p.maxlen, len(vocab), p.lstm_units, p.learning_rate, p.jit_compile, p.unroll)

    val = make_dataset(ids, val_starts, p.maxlen, len(vocab), p.batch_size) if len(val_starts) else None
    # The weights after every epoch, for the sample step to show how the text improves.
    (ctx.out / EPOCH_WEIGHTS).mkdir(exist_ok=True)
    keep_epochs = keras.callbacks.ModelCheckpoint(
        str(ctx.out / EPOCH_WEIGHTS / "epoch-{epoch:04d}.weights.h5"), save_weights_only=True
    )
    result = fit_resumable(
        ckpt_dir=ctx.out,
        fingerprint=ctx.key,
        epochs=p.epochs,
        build_model=new_model,
        train_data=lambda epoch: make_dataset(
            ids, train_starts, p.maxlen, len(vocab), p.batch_size, shuffle_seed=p.seed + epoch
        ),
        val_data=val,
        samples_per_epoch=len(train_starts),
        steps_per_epoch=math.ceil(len(train_starts) / p.batch_size),
        callbacks=[keep_epochs],
        progress=ctx.progress,
        log=ctx.log,
        budget=ctx.budget,
        replicas=replicas,
    )
    history = result["history"]
    metrics: dict[str, Any] = {
        "epochs": len(history["loss"]),
        "loss": history["loss"][-1],
        "samples_per_s": history["samples_per_s"][-1],
        "device": device,
        "resumed_from_epoch": result["resumed_from"],
        "parameters": result["parameters"],
        "input_shape": [p.batch_size, p.maxlen, len(vocab)],
        "replicas": result["replicas"],
        "devices": result["devices"],
    }
    if "val_loss" in history:
        metrics["val_loss"] = history["val_loss"][-1]
        metrics["val_bits_per_char"] = history["val_loss"][-1] / math.log(2)
        history["val_bits_per_char"] = [v / math.log(2) for v in history["val_loss"]]
    write_json_atomic(ctx.out / "metrics.json", {"final": metrics, "history": history})
    return metrics


# ---------------------------------------------------------------------------------------------
# Sampling


def sample(p: TextLSTMParams, ctx: StepContext) -> dict[str, Any]:
    ids, vocab = load_corpus(ctx.upstream["vectorize"])
    model = load_model(ctx.upstream["train"] / FINAL)
    # As in the book: one random seed window of the corpus, continued at every temperature.
    start = int(np.random.default_rng(p.seed).integers(0, len(ids) - p.maxlen))
    seed_ids = ids[start : start + p.maxlen]
    sampler = TextSampler(model)
    t0 = time.perf_counter()
    generated = sampler.generate(seed_ids, p.temperatures, p.sample_length, p.sampler, p.seed)
    seconds = time.perf_counter() - t0
    seed_text = "".join(vocab[i] for i in seed_ids)
    texts = {}
    for temperature, row in zip(p.temperatures, generated, strict=True):
        text = "".join(vocab[i] for i in row)
        texts[repr(temperature)] = text
        (ctx.out / f"temperature_{temperature!r}.txt").write_text(seed_text + text, encoding="utf-8")
    # The book's per-epoch samples, from the weights train kept after every epoch.
    per_epoch = []
    if p.epoch_sample_length:
        for epoch, weights in numbered_files(ctx.upstream["train"] / EPOCH_WEIGHTS, "epoch", ".weights.h5"):
            model.load_weights(weights)  # into the same variables: the compiled sampler is reused
            rows = sampler.generate(seed_ids, p.temperatures, p.epoch_sample_length, p.sampler, p.seed)
            per_epoch += [
                {"epoch": epoch, "temperature": t, "text": "".join(vocab[i] for i in row)}
                for t, row in zip(p.temperatures, rows, strict=True)
            ]
    summary = {
        **reference_points(p, ids, len(vocab)),
        "longest_run": max(longest_run(text) for text in texts.values()),
        "seed_text": seed_text,
        "seed_start": start,
        "sampler": p.sampler,
        "texts": texts,
        "per_epoch": per_epoch,
        "chars_per_s": generated.size / seconds,
    }
    write_json_atomic(ctx.out / SAMPLES_JSON, summary)
    ctx.log(f"sampled {generated.size} characters at {summary['chars_per_s']:.0f}/s ({p.sampler})")
    return {"temperatures": list(texts), "chars_per_s": summary["chars_per_s"]}


def reference_points(p: TextLSTMParams, ids: np.ndarray, n_vocab: int) -> dict[str, float]:
    """Held-out bits per character of the untrained network (the weights training started from)
    and of LZMA (xz -9e) given the training text: a classical compressor as the reference a
    trained model should approach. Empty without a held-out split."""
    import lzma

    import keras

    _, val_starts = split_starts(len(ids), p.maxlen, p.stride, p.validation_split)
    if not len(val_starts):
        return {}
    keras.utils.set_random_seed(p.seed)
    untrained = build_model(p.maxlen, n_vocab, p.lstm_units, p.learning_rate, p.jit_compile, p.unroll)
    val = make_dataset(ids, val_starts, p.maxlen, n_vocab, p.batch_size)
    nats = float(untrained.evaluate(val, verbose=0))
    cut = int(val_starts[0]) + p.maxlen  # the held-out targets start here

    def xz(part: np.ndarray) -> int:
        return len(lzma.compress(part.astype(np.uint32).tobytes(), preset=9 | lzma.PRESET_EXTREME))

    lzma_bits = (xz(ids) - xz(ids[:cut])) * 8 / max(1, len(ids) - cut)
    return {"untrained_bits_per_char": nats / math.log(2), "lzma_bits_per_char": lzma_bits}


# ---------------------------------------------------------------------------------------------
# Report


def report(p: TextLSTMParams, dirs: dict[str, Path]) -> Report:
    train_metrics = json.loads((dirs["train"] / "metrics.json").read_text())
    meta = json.loads((dirs["vectorize"] / META).read_text())
    samples = json.loads((dirs["sample"] / SAMPLES_JSON).read_text())
    history = train_metrics["history"]
    final = train_metrics["final"]
    metrics = {
        "epochs": final["epochs"],
        "train_loss": final["loss"],
        **(
            {"val_loss": final["val_loss"], "val_bits_per_char": final["val_bits_per_char"]}
            if "val_loss" in final
            else {}
        ),
        "train_samples_per_s": final["samples_per_s"],
        "sampling_chars_per_s": samples["chars_per_s"],
        "corpus_characters": meta["characters"],
        "vocabulary": meta["vocabulary"],
        "device": final["device"],
    }
    sections = [
        Curve(
            "Loss per epoch",
            "loss_curve.png",
            {k: history[k] for k in ("loss", "val_loss") if k in history},
            x="epoch",
            y="cross-entropy (nats/char)",
        ),
        *(
            Text(
                f"Temperature {t} ({p.sampler} sampler)",
                text,
                prefix=samples["seed_text"],
                name=f"temperature-{t}",
            )
            for t, text in samples["texts"].items()
        ),
    ]
    if samples["per_epoch"]:
        sections.append(Table("Samples after each epoch (same seed)", samples["per_epoch"], name="per-epoch"))
    if p.normalize:
        sections.append(
            Note(
                "The corpus was normalised before training: runs of spaces collapsed, at most one "
                "blank line, ruled lines (----, ====) cut to three characters."
            )
        )
    quality = None
    metrics["longest_run"] = samples["longest_run"]
    if "val_bits_per_char" in final and "lzma_bits_per_char" in samples:
        metrics["untrained_bits_per_char"] = samples["untrained_bits_per_char"]
        metrics["lzma_bits_per_char"] = samples["lzma_bits_per_char"]
        quality = Quality(
            metric="val_bits_per_char",
            value=final["val_bits_per_char"],
            untrained=samples["untrained_bits_per_char"],
            reference=samples["lzma_bits_per_char"],
            value_floor=BITS_PER_CHAR_FLOOR,
            higher_is_better=False,
            label="held-out bits per character",
            untrained_is="the untrained network",
            reference_is="LZMA given the training text",
            checks=(
                Check(
                    "longest_run",
                    samples["longest_run"],
                    LONGEST_RUN_BOUND,
                    higher_is_better=False,
                    what="longest run of one character in the samples",
                ),
            ),
        )
    return Report(
        title="text_lstm: character-level LSTM text generation",
        quality=quality,
        metrics=metrics,
        sections=sections,
        history={k: v for k, v in history.items() if k in ("loss", "val_loss", "val_bits_per_char")},
    )


register(
    Technique(
        name="text_lstm",
        summary="character-level LSTM text generation (Chollet 8.1)",
        params_model=TextLSTMParams,
        inputs={"corpus": Input(dataset=lambda p: p.dataset, source="source")},
        vectorize=vectorize,
        train=train,
        sample=sample,
        report=report,
        headline=("val_bits_per_char", "val_loss", "train_loss"),
        plots={"loss": ("loss", "val_loss")},
        demo_overrides=DEMO,
        tiny_overrides=TINY,
        rehearsal=Rehearsal(
            {"epochs": 1, "max_chars": 30000, "sample_length": 40, "epoch_sample_length": 20},
            updates=training_updates,
        ),
        module=__name__,
    )
)
