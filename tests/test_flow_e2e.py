"""`gdl run` end to end against a real Prefect server: caching across runs, artifacts, errors."""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import cached_steps as _cached
from conftest import cli_env, gdl

pytestmark = pytest.mark.slow


def _artifact_keys(api: str) -> set[str]:
    req = urllib.request.Request(
        api + "/artifacts/filter",
        data=json.dumps({"limit": 200}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return {a["key"] for a in json.load(resp) if a.get("key")}


def test_second_run_hits_cache_and_changing_temperatures_reruns_only_sample_and_publish(project, prefect_api):
    env = cli_env(project, PREFECT_API_URL=prefect_api)
    first = gdl(project, "run", "text_lstm", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = first.stdout.strip().splitlines()[-1]
    assert run_dir.startswith("data/runs/text_lstm/")
    assert (project / run_dir / "report.html").is_file()
    assert _cached(first.stderr) == set()
    # Issue 7 item 12: TensorFlow's CUDA probe says nothing on a CPU run.
    assert "cuda" not in first.stderr.lower() and "absl::InitializeLog" not in first.stderr

    second = gdl(project, "run", "text_lstm", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _cached(second.stderr) == {"download", "vectorize", "train", "sample", "publish"}
    assert second.stdout.strip().splitlines()[-1] == run_dir

    third = gdl(project, "run", "text_lstm", "--set", "text_lstm.temperatures=[0.3, 0.9]", env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _cached(third.stderr) == {"download", "vectorize", "train"}
    new_dir = third.stdout.strip().splitlines()[-1]
    assert new_dir != run_dir
    assert sorted(p.name for p in (project / new_dir / "samples").glob("*.txt")) == [
        "temperature_0.3.txt",
        "temperature_0.9.txt",
    ]

    keys = _artifact_keys(prefect_api)
    assert {
        "text-lstm-summary",
        "text-lstm-loss-curve",
        "text-lstm-training",
        "text-lstm-temperature-0-3",
        "text-lstm-temperature-0-9",
        "text-lstm-per-epoch",
    } <= keys

    nightly = gdl(project, "run", "all", env=env)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert f"text_lstm: {run_dir}/report.html" in nightly.stdout
    assert "nightly-summary" in _artifact_keys(prefect_api)


def test_a_run_stopped_at_its_budget_is_incomplete_and_the_next_resumes_and_publishes(project, prefect_api):
    env = cli_env(project, PREFECT_API_URL=prefect_api)
    # A budget spent before the first epoch ends: each run trains one epoch (of tiny's two).
    budget = ("--set", "text_lstm.max_train_minutes=0.0001")
    first = gdl(project, "run", "text_lstm", *budget, env=env)
    assert first.returncode == 75, first.stderr[-3000:]
    assert (
        "text_lstm: stopped at its budget of 0.0001 min after epoch 1 of 2 (checkpoint kept): "
        "run the same command again to resume"
    ) in first.stdout.splitlines()
    assert "Finished in state Incomplete" in first.stderr
    assert not list((project / "data" / "runs").glob("text_lstm/*/report.html"))  # nothing published
    assert "text-lstm-incomplete" in _artifact_keys(prefect_api)

    second = gdl(project, "run", "text_lstm", *budget, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from epoch 1 of 2" in second.stderr
    assert (project / second.stdout.strip().splitlines()[-1] / "report.html").is_file()


def test_deleted_outputs_are_rebuilt_not_served_from_a_stale_cache(project, prefect_api):
    import shutil

    env = cli_env(project, PREFECT_API_URL=prefect_api)
    assert gdl(project, "run", "text_lstm", env=env).returncode == 0
    shutil.rmtree(project / "data" / "processed")
    again = gdl(project, "run", "text_lstm", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "vectorize" not in _cached(again.stderr)
    assert list((project / "data" / "processed" / "text_lstm").glob("*/corpus.npy"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "looks binary"),
        ("na\u00efve caf\u00e9 text".encode("latin-1"), "is not valid UTF-8"),
        (b"too short", "needs at least maxlen + 1 = 13"),
    ],
)
def test_bad_corpus_fails_with_one_line_and_leaves_nothing_half_written(
    project, prefect_api, content, message
):
    corpus = project / "mine.txt"
    corpus.write_bytes(content)
    env = cli_env(project, PREFECT_API_URL=prefect_api)
    result = gdl(project, "run", "text_lstm", "--set", f"text_lstm.source={corpus}", env=env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("gdl: error:")]
    assert len(errors) == 1 and message in errors[0]
    # Issue 7 item 9: no Prefect traceback on the console; the error line says where it is.
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 12
    log = project / errors[0].split("(traceback in ", 1)[1].split(";", 1)[0]
    assert "Traceback (most recent call last)" in log.read_text() and message in log.read_text()
    leftovers = [
        p
        for p in (project / "data").rglob("*")
        if p.is_file() and p.suffix not in (".gdl-lock",) and not p.name.endswith(".gdl-lock")
    ]
    # A corpus that decodes but is too short is a complete, valid download; nothing else stays.
    allowed = {"corpus.txt", ".step.json", ".step-run.json"} if message.startswith("needs") else set()
    assert {p.name for p in leftovers} <= allowed


def test_verbose_prints_the_traceback(project, prefect_api):
    corpus = project / "mine.txt"
    corpus.write_bytes(b"\x00binary")
    env = cli_env(project, PREFECT_API_URL=prefect_api)
    result = gdl(project, "run", "text_lstm", "--verbose", "--set", f"text_lstm.source={corpus}", env=env)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "looks binary" in result.stderr
