"""text_lstm, side by side in one run: the book's sampling loop vs ours, and vectorization memory.

Sampling: the same model weights, sampled four ways:
  book      one `model.predict` per character on a freshly one-hot-encoded window (Chollet 8.1)
  keras-io  the best public Keras code (keras-io's "Character-level text generation with LSTM"):
            the same per-character `predict` loop, a float64 one-hot window, the temperature
            applied as log(p) / T, then exp and renormalise, drawn by numpy's multinomial
  default   our compiled window sampler, batched across the temperatures (same semantics)
  stateful  our compiled sampler carrying the LSTM state (one cell step per character): NOT the
            same algorithm (DIFFERENCES, printed)
Vectorization: peak traced memory of the book's dense boolean (N, maxlen, chars) array against
our index array + window starts, on the same corpus.

The last line printed is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from models.inputs import offline  # noqa: E402
from models.inputs.catalog import get_dataset
from models.inputs.formats import decode_text
from models.techniques.text_lstm import build_model, encode, split_starts  # noqa: E402
from models.techniques.text_sampler import TextSampler, reweight  # noqa: E402


def book_vectorize(text: str, maxlen: int, step: int):
    """The book's vectorization, as written there: lists of strings, then dense booleans."""
    sentences, next_chars = [], []
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i : i + maxlen])
        next_chars.append(text[i + maxlen])
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    x = np.zeros((len(sentences), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(sentences), len(chars)), dtype=bool)
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t, index[char]] = 1
        y[i, index[next_chars[i]]] = 1
    return x, y


def our_vectorize(text: str, maxlen: int, step: int):
    ids, vocab = encode(text)
    return ids, vocab, split_starts(len(ids), maxlen, step, 0.05)


def peak_bytes(fn, *args) -> int:
    gc.collect()
    tracemalloc.start()
    result = fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    gc.collect()
    return peak


def book_sampling(model, seed_ids, n_vocab: int, temperature: float, length: int, rng) -> float:
    """chars/s of the book's loop: one-hot the window, model.predict, reweight, draw, slide."""
    maxlen = len(seed_ids)
    window = list(seed_ids)
    model.predict(np.zeros((1, maxlen, n_vocab), np.float32), verbose=0)  # warm-up, not timed
    t0 = time.perf_counter()
    for _ in range(length):
        x = np.zeros((1, maxlen, n_vocab), dtype=np.float32)
        for t, idx in enumerate(window):
            x[0, t, idx] = 1.0
        preds = model.predict(x, verbose=0)[0]
        nxt = int(np.argmax(rng.multinomial(1, reweight(preds, temperature) * (1 - 1e-9), 1)))
        window = [*window[1:], nxt]
    return length / (time.perf_counter() - t0)


DIFFERENCES = {
    "keras_io": "keras-io and the book: the same algorithm (the softmax of the last maxlen characters); "
    "keras-io reweights in log space, the book as p ** (1/T)",
    "stateful": "stateful: the LSTM state carries every character generated so far, so each draw is "
    "conditioned on the whole text, not on its last maxlen characters as the model was trained: "
    "other text for the same seed, one cell step per character instead of maxlen",
}


def keras_io_sampling(model, seed_ids, n_vocab: int, temperature: float, length: int, rng) -> float:
    """chars/s of keras-io's loop (written for this benchmark): a float64 one-hot of the window,
    `predict`, log(p) / T, softmax, a multinomial draw, slide the window."""
    maxlen = len(seed_ids)
    window = list(seed_ids)
    model.predict(np.zeros((1, maxlen, n_vocab)), verbose=0)  # warm-up, not timed
    t0 = time.perf_counter()
    for _ in range(length):
        x = np.zeros((1, maxlen, n_vocab))
        x[0, np.arange(maxlen), window] = 1.0
        logp = np.log(np.asarray(model.predict(x, verbose=0)[0], np.float64)) / temperature
        p = np.exp(logp - logp.max())
        nxt = int(np.argmax(rng.multinomial(1, p / p.sum() * (1 - 1e-9), 1)))
        window = [*window[1:], nxt]
    return length / (time.perf_counter() - t0)


def ours(sampler, seed_ids, temps, length: int, mode: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    sampler.generate(seed_ids, temps, 2, mode)  # traces and compiles, not timed
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampler.generate(seed_ids, temps, length, mode, seed=1)
    return out.size / (time.perf_counter() - t0), compile_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maxlen", type=int, default=60)
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=None, help="corpus prefix (default: all)")
    ap.add_argument("--book-chars", type=int, default=60, help="characters for the book loop")
    ap.add_argument("--length", type=int, default=400, help="characters per temperature (ours)")
    ap.add_argument("--stateful-length", type=int, default=4000)
    args = ap.parse_args()

    dataset = get_dataset("nietzsche")
    text = decode_text(offline.load(dataset.offline.loader, dataset.offline.args), "offline corpus")
    text = text.lower()[: args.max_chars]
    print(f"corpus: {dataset.offline.description}: {len(text)} characters")

    book_peak = peak_bytes(book_vectorize, text, args.maxlen, args.step)
    our_peak = peak_bytes(our_vectorize, text, args.maxlen, args.step)
    print(
        f"vectorize peak memory: book {book_peak / 2**20:.1f} MiB, ours {our_peak / 2**20:.2f} MiB"
        f" -> {book_peak / our_peak:.0f}x smaller"
    )

    import keras

    ids, vocab = encode(text)
    keras.utils.set_random_seed(0)
    model = build_model(args.maxlen, len(vocab), 128, 0.01)  # the same weights for all three
    seed_ids = ids[: args.maxlen]
    temps = [0.2, 0.5, 1.0, 1.2]
    book = book_sampling(model, seed_ids, len(vocab), 0.5, args.book_chars, np.random.default_rng(0))
    print(f"book loop (model.predict per character): {book:.1f} chars/s")
    kio = keras_io_sampling(model, seed_ids, len(vocab), 0.5, args.book_chars, np.random.default_rng(0))
    print(f"keras-io loop (model.predict per character, log-space reweighting): {kio:.1f} chars/s")
    sampler = TextSampler(model)
    default, default_compile = ours(sampler, seed_ids, temps, args.length, "window")
    print(
        f"default sampler (window, {len(temps)} temperatures batched): {default:.0f} chars/s "
        f"({default / book:.0f}x the book's, {default / kio:.0f}x keras-io's; compile "
        f"{default_compile:.1f} s, not timed)"
    )
    stateful, stateful_compile = ours(sampler, seed_ids, temps, args.stateful_length, "stateful")
    print(
        f"stateful sampler: {stateful:.0f} chars/s ({stateful / book:.0f}x the book's, "
        f"{stateful / kio:.0f}x keras-io's; compile {stateful_compile:.1f} s, not timed)"
    )
    for note in DIFFERENCES.values():
        print(f"  {note}")
    print(
        json.dumps(
            {
                "corpus_chars": len(text),
                "book_chars_per_s": round(book, 2),
                "keras_io_chars_per_s": round(kio, 2),
                "default_chars_per_s": round(default, 1),
                "stateful_chars_per_s": round(stateful, 1),
                "default_vs_book": round(default / book, 1),
                "stateful_vs_book": round(stateful / book, 1),
                "default_vs_keras_io": round(default / kio, 1),
                "stateful_vs_keras_io": round(stateful / kio, 1),
                "book_vectorize_peak_bytes": book_peak,
                "ours_vectorize_peak_bytes": our_peak,
                "vectorize_memory_ratio": round(book_peak / our_peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
