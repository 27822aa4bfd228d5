"""`dvc repro` end to end with the real dvc CLI in a scratch git repository."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from conftest import REPO, cli_env, gdl, write_params

pytestmark = pytest.mark.slow


def _sh(repo, *cmd, env=None, check=True):
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode:
        raise AssertionError(f"{cmd} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def dvc_repo(tmp_path):
    """A git repository holding the project's pipeline files and code, with tiny params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("models", "tasks", "flows"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    write_params(repo)
    env = cli_env(repo)
    env.pop("GDL_ROOT")  # dvc runs `gdl stage` in the repository, as a user's shell would
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        _sh(repo, *cmd, env=env)
    return repo, env


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


# One pipeline of several, as a user reproduces it: `dvc repro <its last stage>`.
PIPELINE = ("dvc", "repro", "text_lstm-publish")
STATUS = ("dvc", "status", "--with-deps", "text_lstm-publish")


def test_repro_runs_once_then_only_what_a_param_change_touches(dvc_repo, prefect_api):
    repo, env = dvc_repo
    first = _sh(repo, *PIPELINE, env=env)
    assert _ran(first.stdout) == [
        f"text_lstm-{s}" for s in ("download", "vectorize", "train", "sample", "publish")
    ]
    run = repo / "data" / "runs" / "text_lstm" / "dvc"
    assert (run / "report.html").is_file() and (run / "samples" / "temperature_0.2.txt").is_file()

    second = _sh(repo, *PIPELINE, env=env)
    assert _ran(second.stdout) == []

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["demo"]["text_lstm"]["temperatures"] = [0.4, 1.1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _sh(repo, *PIPELINE, env=env)
    assert _ran(third.stdout) == ["text_lstm-sample", "text_lstm-publish"]
    assert sorted(p.name for p in (run / "samples").glob("*.txt")) == [
        "temperature_0.4.txt",
        "temperature_1.1.txt",
    ]

    metrics = _sh(repo, "dvc", "metrics", "show", "--json", env=env)
    assert "val_bits_per_char" in metrics.stdout
    plots = _sh(repo, "dvc", "plots", "show", "-o", str(repo / "plots_out"), env=env)
    assert (repo / "plots_out" / "index.html").is_file(), plots.stdout

    # Issue 7 item 13: metrics and plots files are committed with dvc.lock, so a fresh clone
    # shows and diffs them without the DVC cache; the loss chart draws train and validation.
    _sh(repo, "dvc", "plots", "show", env=env)  # into dvc_plots/, which git ignores
    _sh(repo, "git", "add", "-A", env=env)
    tracked = _sh(repo, "git", "ls-files", "data", env=env).stdout.split()
    assert sorted(tracked) == [f"{run.relative_to(repo)}/{f}" for f in ("history.csv", "metrics.json")]
    assert not _sh(repo, "git", "ls-files", "dvc_plots", env=env).stdout
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run", env=env)
    clone = repo.parent / "clone"
    _sh(repo.parent, "git", "clone", "-q", str(repo), str(clone), env=env)
    shown = json.loads(_sh(clone, "dvc", "metrics", "show", "--json", env=env).stdout)
    assert "val_bits_per_char" in json.dumps(shown)
    charts = json.loads(_sh(clone, "dvc", "plots", "show", "--json", env=env).stdout)["data"]
    loss = charts["text_lstm: loss"][0]["content"]
    assert {row["field"] for row in loss["data"]["values"]} == {"loss", "val_loss"}  # one chart
    assert loss["encoding"]["x"]["field"] == "epoch"
    diff = _sh(clone, "dvc", "metrics", "diff", "HEAD~1", "--json", env=env)
    assert "val_bits_per_char" in diff.stdout  # new since the commit before

    # The Prefect flow, same params: same processed data, and DVC's view is left intact.
    flow = gdl(repo, "run", "text_lstm", env={**env, "GDL_ROOT": str(repo), "PREFECT_API_URL": prefect_api})
    assert flow.returncode == 0, flow.stderr[-3000:]
    flow_corpus = [
        p for p in (repo / "data/processed/text_lstm").glob("*/corpus.npy") if p.parent.name != "dvc"
    ]
    dvc_corpus = repo / "data/processed/text_lstm/dvc/corpus.npy"
    assert len(flow_corpus) == 1
    assert (
        hashlib.sha256(flow_corpus[0].read_bytes()).digest()
        == hashlib.sha256(dvc_corpus.read_bytes()).digest()
    )
    status = _sh(repo, *STATUS, env=env)
    assert "up to date" in status.stdout

    # DVC tracks each catalog entry a stage reads, not the whole catalog (chelsea is read by the
    # image techniques' stages, not by text_lstm's).
    catalog = repo / "models" / "inputs" / "catalog.yaml"
    entries = yaml.safe_load(catalog.read_text())
    entries["chelsea"]["description"] = "another cat"
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    assert "up to date" in _sh(repo, *STATUS, env=env).stdout
    entries["nietzsche"]["remote"] = "https://example.org/elsewhere.txt"
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    changed = _sh(repo, *STATUS, env=env).stdout
    assert "text_lstm-download" in changed and "nietzsche" in changed


def test_killed_training_resumes_and_ends_with_the_same_epoch_count(dvc_repo):
    repo, env = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["demo"]["text_lstm"]["epochs"] = 25
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for step in ("download", "vectorize"):
        assert gdl(repo, "stage", "text_lstm", step, env=env).returncode == 0
    state = repo / "data" / "checkpoints" / "text_lstm" / "dvc" / "state.json"
    proc = subprocess.Popen(
        [str(env["PATH"].split(os.pathsep)[0] + "/gdl"), "stage", "text_lstm", "train"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = yaml.safe_load(state.read_text())["epoch"]
    assert 1 <= done_before_kill < 25

    resumed = gdl(repo, "stage", "text_lstm", "train", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    match = re.search(r"resuming from epoch (\d+) of 25", resumed.stderr)
    assert match and int(match.group(1)) >= done_before_kill
    final = yaml.safe_load((state.parent / "metrics.json").read_text())["final"]
    assert final["epochs"] == 25 and final["resumed_from_epoch"] == int(match.group(1))


def test_datasets_and_checkpoints_round_trip_through_an_s3_dvc_remote(dvc_repo, s3):
    repo, env = dvc_repo
    _client, bucket = s3
    env = {**env, **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GDL_S3"))}}
    _sh(repo, "dvc", "repro", "text_lstm-train", env=env)
    remote = gdl(repo, "dvc-remote", "--url", f"s3://{bucket}/dvc", env=env)
    assert remote.returncode == 0, remote.stderr
    assert "endpointurl" in (repo / ".dvc" / "config.local").read_text()
    _sh(repo, "dvc", "push", env=env)
    model = repo / "data" / "checkpoints" / "text_lstm" / "dvc" / "model.keras"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _sh(repo, "dvc", "pull", "--with-deps", "text_lstm-train", env=env)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    assert (repo / "data" / "raw" / "dvc" / "text_lstm" / "corpus" / "corpus.txt").is_file()
    assert "up to date" in _sh(repo, "dvc", "status", "text_lstm-train", env=env).stdout
