"""The gdl command line: list, and one-line errors for bad input with nothing written."""

from __future__ import annotations

import signal

import pytest
from conftest import gdl

from models.core.registry import techniques


def test_list_prints_each_technique_name_first(project):
    result = gdl(project, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(techniques())
    by_name = {line.split("\t")[0]: line for line in lines}
    assert "nietzsche" in by_name["text_lstm"]
    # Third column: whether the technique trains data-parallel (has `replicas`).
    assert {line.split("\t")[0]: line.split("\t")[2] for line in lines} == {
        name: "replicas" if t.supports_replicas else "-" for name, t in techniques().items()
    }
    for name, t in techniques().items():  # every dataset either profile reads is listed
        assert all(d in by_name[name] for d in t.dataset_names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope"], "unknown technique 'nope'"),
        (["run", "text_lstm", "--set", "text_lstm.maxlen=0"], "text_lstm.maxlen"),
        (["run", "text_lstm", "--set", "text_lstm.stride=0"], "text_lstm.stride"),
        (["run", "text_lstm", "--set", "text_lstm.step=3"], "parameter 'step' was renamed to 'stride'"),
        (["run", "text_lstm", "--set", "text_lstm.temperatures=[0]"], "temperature"),
        (["run", "text_lstm", "--set", "text_lstm.temperatures=[1e-300, 1.0]"], "temperature"),
        (["run", "deepdream", "--set", "deepdream.num_octave=3000"], "deepdream.num_octave"),
        (["run", "deepdream", "--set", "deepdream.octave_scale=1e200"], "deepdream.octave_scale"),
        (["run", "text_lstm", "--set", "text_lstm.bogus=1"], "unknown parameter 'text_lstm.bogus'"),
        (["run", "all", "--set", "text_lstm.maxlen=-1"], "text_lstm.maxlen"),
        (["stage", "nope", "train"], "unknown technique 'nope'"),
        (
            ["run", "dcgan", "--set", "dcgan.latent_dim=2147483647"],
            "dcgan: latent_dim=2147483647 and batch_size=",
        ),
        (["run", "dcgan", "--set", "dcgan.batch_size=2147483647"], "and batch_size=2147483647 need at least"),
        (["run", "all", "--set", "wgan_gp.batch_size=2147483647"], "wgan_gp: latent_dim="),
        (["run", "text_lstm", "--set", "text_lstm.lstm_units=2147483647"], "text_lstm: lstm_units=21474836"),
        (["run", "vae", "--set", "vae.latent_dim=2147483647"], "vae: latent_dim=2147483647 and conv_dense_"),
        # Issue 16 section 4: a port out of range or not a number (urllib raises ValueError).
        (["run", "text_lstm", "--set", "text_lstm.source=http://127.0.0.1:99999/x"], "not a valid URL"),
        (["run", "text_lstm", "--set", "text_lstm.source=http://127.0.0.1:abc/x"], "not a valid URL"),
        # Issue 16 section 3: a password in a source would reach Prefect's database: env:NAME.
        (["run", "text_lstm", "--set", "text_lstm.source=http://u:s3cret@127.0.0.1:1/x"], "env:NAME"),
        (["run", "gan", "--set", "gan.batch_size=30", "--set", "gan.replicas=4"], "gan.batch_size=30 is not"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_work(project, args, message):
    result = gdl(project, *args)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdl: error:") and message in err[0]
    assert "s3cret" not in result.stderr + result.stdout
    assert not (project / "data").exists()


def test_a_publish_folder_that_is_a_file_fails_the_run_in_one_line_before_any_work(project):
    from conftest import cli_env

    a_file = project / "published"
    a_file.write_text("not a folder")
    result = gdl(project, "run", "text_lstm", env=cli_env(project, GDL_PUBLISH_DIR=str(a_file)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gdl: error: GDL_PUBLISH_DIR='{a_file}': expected a folder, but it is a file"
    ]
    assert not (project / "data").exists() and a_file.read_text() == "not a folder"


def test_a_dataset_dvc_yaml_does_not_track_is_refused_by_the_stage(project):
    import shutil

    from conftest import REPO, write_params

    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    write_params(project, dataset="mnist")  # chosen in params.yaml, not declared by dvc.yaml
    result = gdl(project, "stage", "text_lstm", "download")
    assert result.returncode == 2
    assert "catalog entry mnist for text_lstm, which dvc.yaml does not track" in result.stderr
    assert "gdl dvc-yaml --write" in result.stderr
    assert not (project / "data").exists()


def test_a_dvc_stage_stopped_at_its_budget_says_so_and_the_next_repro_resumes(project):
    import shutil

    from conftest import REPO, write_params

    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    write_params(project, max_train_minutes=0.0001)  # one epoch per run, of tiny's two
    for step in ("download", "vectorize"):
        assert gdl(project, "stage", "text_lstm", step).returncode == 0
    first = gdl(project, "stage", "text_lstm", "train")
    assert first.returncode == 75, first.stderr[-2000:]
    assert (
        "gdl: text_lstm-train stopped at its budget of 0.0001 min after epoch 1 of 2 (checkpoint kept): "
        "run `dvc repro` again to resume"
    ) in first.stderr.splitlines()
    assert not (project / "data/checkpoints/text_lstm/dvc/.step.json").exists()
    second = gdl(project, "stage", "text_lstm", "train")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from epoch 1 of 2" in second.stderr
    assert (project / "data/checkpoints/text_lstm/dvc/.step.json").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_that_a_library_swallows_is_delivered_again_until_gdl_is_done(signum):
    """Ctrl-C or SIGTERM raised where a library catches BaseException (as Prefect's concurrency
    calls do) would leave the run going: gdl delivers it again until its command is done."""
    import os
    import time

    from flows.process import StopSignals, Terminated

    expected = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignals(period=0.2)
    stop.install()
    swallowed = []
    try:
        with pytest.raises(expected):
            try:
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler raises here
            except BaseException as exc:  # a library losing the interrupt
                swallowed.append(exc)
            for _ in range(50):  # "training goes on": the interrupt comes again within a period
                time.sleep(0.1)
        assert len(swallowed) == 1 and isinstance(swallowed[0], expected)
        stop.finish()
        stop.reminder.join(2)
        assert not stop.reminder.is_alive()  # once gdl is done, nothing more is delivered
    finally:
        stop.finish()
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("command", ["list", "params"])
def test_a_reader_that_goes_away_ends_gdl_quietly_as_git_does(project, command):
    """`gdl list | head -1`: once the pipe's reader is gone, gdl stops without a traceback and
    exits 141 (128 + SIGPIPE), the status a shell sees from git or ls in the same place."""
    import os
    import subprocess

    from conftest import BIN, cli_env

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone, so the first write finds the pipe broken
    try:
        closed = subprocess.run(
            [str(BIN / "gdl"), command],
            cwd=project,
            env=cli_env(project),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (closed.returncode, closed.stderr) == (141, "")
    # Through a shell, as users type it (whether the reader is gone before gdl's last write is a
    # race: 0 when it was not, 141 when it was; never a traceback).
    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"gdl {command} | head -1"],
        cwd=project,
        env=cli_env(project),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.stderr == ""
    assert len(shell.stdout.splitlines()) == 1
    assert shell.returncode in (0, 141)
