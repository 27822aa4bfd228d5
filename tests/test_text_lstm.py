"""text_lstm: compact vectorization, book-exact sampling, resumable training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from models.core.errors import GdlError
from models.core.files import digest_json
from models.core.registry import StepContext, get
from models.techniques.text_lstm import (
    CORPUS,
    TINY,
    TextLSTMParams,
    build_model,
    encode,
    longest_run,
    normalize_text,
    split_starts,
)
from models.techniques.text_sampler import TextSampler, reweight

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


def params(**kw) -> TextLSTMParams:
    return TextLSTMParams(**{**TINY, **kw})


def vectorize(tmp_path, text: str, **kw):
    raw, out = tmp_path / "raw", tmp_path / "proc"
    raw.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    (raw / "corpus.txt").write_text(text, encoding="utf-8")
    ctx = StepContext({}, out, inputs={"corpus": raw / "corpus.txt"})
    meta = get("text_lstm").vectorize(params(**kw), ctx)
    return meta, out


def test_vectorize_keeps_indices_not_a_dense_one_hot_array(tmp_path):
    meta, out = vectorize(tmp_path, TEXT.upper())
    ids = np.load(out / CORPUS)
    assert ids.dtype == np.uint8 and ids.shape == (len(TEXT),)
    assert meta["vocabulary"] == len(set(TEXT.lower()))  # lower-cased, as in the book
    expected = len(range(0, len(TEXT) - 12, 3))
    assert meta["sequences"] == expected


def test_sequence_count_matches_the_books_formula():
    # Nietzsche: 600,893 characters, maxlen 60, step 3 -> 200,278 sequences (Chollet 8.1).
    train, val = split_starts(600_893, 60, 3, 0.0)
    assert len(train) == 200_278 and len(val) == 0


def test_validation_windows_never_leak_into_training_targets():
    train, val = split_starts(5_000, 20, 3, 0.1)
    assert len(val) == round(len(range(0, 5_000 - 20, 3)) * 0.1)
    assert (train + 20).max() < val.min()


def test_encode_round_trips():
    ids, vocab = encode("abcab\u00e9")
    assert "".join(vocab[i] for i in ids) == "abcab\u00e9"


@pytest.mark.parametrize("length", [0, 5, 12])
def test_corpus_shorter_than_maxlen_plus_one_is_rejected_leaving_nothing(tmp_path, length):
    with pytest.raises(GdlError, match="needs at least maxlen \\+ 1 = 13"):
        vectorize(tmp_path, "x" * length if length else " a")
    assert list((tmp_path / "proc").iterdir()) == []


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(7)
    m = build_model(maxlen=12, n_vocab=20, units=16, learning_rate=0.01)
    # Random weights give too flat a distribution to test sharpening; scale the logits up.
    dense = m.layers[-1]
    dense.kernel.assign(dense.kernel.numpy() * 8.0)
    return m


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0, 1.2])
def test_default_sampler_matches_model_predict_reweighted_like_the_book(model, temperature):
    window = np.random.default_rng(0).integers(0, 20, 12)
    one_hot = np.eye(20, dtype=np.float32)[window][None]
    book = reweight(model.predict(one_hot, verbose=0)[0], temperature)
    ours = TextSampler(model).next_distribution(window, temperature)
    np.testing.assert_allclose(ours, book, atol=1e-5)


def test_reweighting_at_low_temperature_is_numerically_safe(model):
    sampler = TextSampler(model)
    window = np.zeros(12, dtype=np.int32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        p = reweight(np.array([0.0, 1e-30, 0.3, 0.7], np.float32), 0.2)
        q = sampler.next_distribution(window, 0.05)
    assert np.isfinite(p).all() and p[0] == 0.0 and abs(p.sum() - 1) < 1e-12
    assert np.isfinite(q).all() and abs(q.sum() - 1) < 1e-9


def test_generation_is_batched_across_temperatures_and_reproducible(model):
    sampler = TextSampler(model)
    seed = np.arange(12) % 20
    a = sampler.generate(seed, [0.2, 1.0, 1.2], 30, "window", seed=3)
    b = sampler.generate(seed, [0.2, 1.0, 1.2], 30, "window", seed=3)
    assert a.shape == (3, 30) and a.min() >= 0 and a.max() < 20
    np.testing.assert_array_equal(a, b)
    # Low temperature concentrates on few characters; high temperature spreads out.
    assert len(set(a[0])) <= len(set(a[2]))


def test_stateful_sampler_starts_from_the_same_distribution_as_the_window_sampler(model):
    sampler = TextSampler(model)
    seed = np.arange(12) % 20
    # A near-zero temperature makes both samplers pick the argmax of the same first distribution.
    first_window = sampler.generate(seed, [1e-4], 1, "window", seed=0)[0, 0]
    first_stateful = sampler.generate(seed, [1e-4], 1, "stateful", seed=0)[0, 0]
    assert first_window == first_stateful == np.argmax(sampler.next_distribution(seed, 1.0))
    assert sampler.generate(seed, [0.5, 1.0], 25, "stateful", seed=1).shape == (2, 25)


def train_ctx(p, proc, ckpt, progress=None, log=lambda m: None) -> StepContext:
    """The context the train step gets; its key (the checkpoint fingerprint) follows the params."""
    extra = {"progress": progress} if progress else {}
    return StepContext({"vectorize": proc}, ckpt, key=digest_json(p.subset("train")), log=log, **extra)


def test_training_resumes_from_the_last_completed_epoch(tmp_path):
    t = get("text_lstm")
    _, proc = vectorize(tmp_path, TEXT)
    p = params(epochs=3)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    logs: list[str] = []

    class Interrupt(Exception):
        pass

    def stop_after_two(done, total, _logs):
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        t.train(p, train_ctx(p, proc, ckpt, stop_after_two, logs.append))
    resumed = t.train(p, train_ctx(p, proc, ckpt, log=logs.append))
    assert any("resuming from epoch 2 of 3" in line for line in logs)
    assert resumed["epochs"] == 3 and resumed["resumed_from_epoch"] == 2

    # An uninterrupted run with the same params reaches the same weights.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    straight = t.train(p, train_ctx(p, proc, fresh))
    assert straight["loss"] == pytest.approx(resumed["loss"], rel=1e-4)
    # Bits per character are nats / ln 2 (not / ln 10): checked against the saved history.
    import json
    import math

    saved = json.loads((fresh / "metrics.json").read_text())
    assert saved["final"]["val_bits_per_char"] == pytest.approx(
        saved["history"]["val_loss"][-1] / math.log(2)
    )


def test_checkpoint_from_other_params_is_not_resumed(tmp_path):
    t = get("text_lstm")
    _, proc = vectorize(tmp_path, TEXT)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    t.train(params(epochs=1), train_ctx(params(epochs=1), proc, ckpt))
    logs: list[str] = []
    other = params(epochs=1, learning_rate=0.002)
    out = t.train(other, train_ctx(other, proc, ckpt, log=logs.append))
    assert out["resumed_from_epoch"] == 0
    assert any("starting over" in line for line in logs)


def test_normalising_the_corpus_removes_the_runs_samples_collapse_into():
    raw = "def f():\n        return  1\n\n\n\n  Table\n  =========  ======\n  a  b\n"
    text = normalize_text(raw)
    assert text == "def f():\nreturn 1\n\nTable\n=== ===\na b\n"
    assert longest_run(text) == 3 and longest_run(raw) == 9
    assert longest_run("") == 0 and longest_run("ab\n\nc") == 2


def test_the_demo_corpus_normalised_has_no_run_a_sample_could_learn():
    from models.inputs.offline import pydoc_topics

    raw = pydoc_topics().decode("utf-8").lower()
    assert longest_run(raw) >= 20  # what the demo's samples collapsed into before
    assert longest_run(normalize_text(raw)) < 20


@pytest.mark.parametrize("sampler", ["window", "stateful"])
def test_the_production_draw_follows_the_books_reweighting(sampler):
    """The compiled samplers draw from the book's p ** (1/T) renormalised: with the LSTM cut off
    (zero kernel) every step draws from one known distribution, so 6,000 draws must match it."""
    import keras

    keras.utils.set_random_seed(3)
    m = build_model(maxlen=12, n_vocab=8, units=4, learning_rate=0.01)
    dense = m.layers[-1]
    dense.kernel.assign(np.zeros(dense.kernel.shape, np.float32))
    logits = np.linspace(-2.0, 2.0, 8).astype(np.float32)
    dense.bias.assign(logits)
    temperature = 0.4
    drawn = TextSampler(m).generate(np.zeros(12, np.int64), [temperature], 6000, sampler, seed=11)[0]
    frequencies = np.bincount(drawn, minlength=8) / len(drawn)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    book = reweight(softmax, temperature)
    assert np.abs(frequencies - book).sum() / 2 < 0.03  # total variation: sampling noise ~0.01
    wrong = reweight(softmax, np.sqrt(temperature))  # logits * sqrt(1/T): what must fail
    assert np.abs(frequencies - wrong).sum() / 2 > 0.1
