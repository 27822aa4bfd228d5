"""The pieces of the rehearsal and the mirror (issue 19), each on its own: capping, the pace of
training, the projection, the table, where a mirror reads each catalog entry from."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from conftest import BIN

from flows.config import resolve_params
from flows.rehearsal import render_table
from models.core.errors import GdlError
from models.core.registry import Rehearsal, get, techniques
from models.core.settings import settings
from models.inputs.catalog import describe_source, get_dataset, identity, mirror_location, resolve_location
from tasks.steps import Pace


def test_caps_lower_counts_replace_lists_and_treat_none_and_zero_as_all():
    r = Rehearsal({"steps": 8, "limit": 512, "max_images": 4, "sweep": [0.0], "missing": 3})
    capped = r.apply({"steps": 50_000, "limit": None, "max_images": 0, "sweep": [0.0, 0.1, 0.2]})
    assert capped == {"steps": 8, "limit": 512, "max_images": 4, "sweep": [0.0]}
    assert r.apply({"steps": 3})["steps"] == 3  # already below its cap: kept


def test_a_rehearsal_keeps_the_books_shapes_and_caps_only_counts():
    for name in techniques():
        full = resolve_params(name, "full", None)
        rehearsed = resolve_params(name, "full", None, rehearse=True)
        changed = {k for k in full if full[k] != rehearsed[k]}
        assert changed <= set(get(name).rehearsal.caps), (name, changed)
        for shape in ("image_size", "height", "maxlen", "width", "gf", "df", "lstm_units", "latent_dim"):
            assert rehearsed.get(shape) == full.get(shape), (name, shape)
    assert resolve_params("cyclegan", "full", None, rehearse=True)["steps"] == 4


def test_overrides_cannot_lift_a_rehearsals_caps():
    over = {"gan.steps": 100_000}
    assert resolve_params("gan", "full", over, rehearse=True)["steps"] == 8
    assert resolve_params("gan", "full", over)["steps"] == 100_000


def test_pace_times_the_loop_after_its_first_report_and_prefers_within_epoch_reports():
    pace = Pace(None)
    pace.points = [(10.0, 1.0, 9), (12.0, 2.0, 9), (18.0, 5.0, 9)]
    assert pace.summary() == {"done_from": 1.0, "done_to": 5.0, "seconds": 8.0, "total": 9}
    # An epoch loop: its end-of-epoch report comes after validation and the checkpoint.
    pace.points = [(0.0, 0.25, 1), (1.0, 0.75, 1), (9.0, 1.0, 1)]
    assert pace.summary() == {"done_from": 0.25, "done_to": 0.75, "seconds": 1.0, "total": 1}
    pace.points = [(0.0, 1.0, 4)]
    assert pace.summary() is None  # one report: nothing measured, never a made-up number
    seen = []
    forwarding = Pace(lambda d, t, logs: seen.append((d, t)))
    forwarding(1, 3, {})
    assert seen == [(1, 3)] and len(forwarding.points) == 1


def test_text_lstm_updates_count_the_corpus_windows(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("x" * 10_061)
    p = get("text_lstm").params_model(maxlen=60, stride=3, validation_split=0.0, batch_size=128, epochs=2)
    # range(0, 10061 - 60, 3) = 3334 windows -> 27 batches of 128 per epoch.
    assert get("text_lstm").rehearsal.updates(p, {"corpus": corpus}) == 2 * math.ceil(3334 / 128)


def test_vae_updates_count_both_mnist_splits(tmp_path):
    digits = tmp_path / "mnist.npz"
    np.savez(
        digits,
        x_train=np.zeros((600, 28, 28), np.uint8),
        y_train=np.zeros(600, np.uint8),
        x_test=np.zeros((100, 28, 28), np.uint8),
        y_test=np.zeros(100, np.uint8),
    )
    p = get("vae").params_model(held_out=1 / 7, batch_size=16, epochs=10)
    assert get("vae").rehearsal.updates(p, {"digits": digits}) == 10 * math.ceil(600 / 16)


def test_the_table_projects_and_says_when_nothing_was_measured():
    row = {
        "technique": "gan",
        "data": {"images": {"dataset": "mnist", "sha256": "ab" * 32, "location": "x"}},
        "input_shape": [16, 28, 28, 1],
        "parameters": 2_417_073,
        "unit": "step",
        "seconds_per_update": 0.05,
        "full_updates": 4000,
        "projected_train_seconds": 200.0,
    }
    table = render_table([row, {**row, "technique": "vae", "seconds_per_update": None,
                                "projected_train_seconds": None}],
                         {"cyclegan": "bad | thing\nsecond line"})  # fmt: skip
    assert "| `gan` | mnist `abababababab` | 16x28x28x1 | 2,417,073 | 0.05 | 4,000 steps | 3 min |" in table
    assert "| `vae` |" in table and "not measured" in table
    assert "FAILED: bad \\| thing second line" in table and table.count("\n") == 5


def test_a_mirror_serves_every_remote_entry_by_its_file_name(monkeypatch):
    monkeypatch.setenv("GDL_MIRROR", "https://mirror.example/gdl/")
    sky, mnist = get_dataset("sky"), get_dataset("mnist")
    assert mirror_location(sky) == "https://mirror.example/gdl/aGBdQyK.jpg"
    assert resolve_location(mnist, "remote") == "https://mirror.example/gdl/mnist.npz"
    assert "from the mirror" in describe_source(mnist, resolve_location(mnist, "remote"))
    # The catalog's digest still applies to the mirror's copy, and is part of its cache key.
    assert identity(mnist, mirror_location(mnist))["sha256"] == mnist.sha256
    assert mirror_location(get_dataset("photos")) is None  # no remote: nothing to mirror
    assert resolve_location(mnist, "offline") == "offline:mnist"  # other sources unchanged
    monkeypatch.setenv("GDL_MIRROR", "s3://bucket/prefix")
    assert mirror_location(get_dataset("horse2zebra")) == "s3://bucket/prefix/horse2zebra.zip"


@pytest.mark.parametrize("value", ["ftp://h/x", "/local/folder", "https://h/x?token=1", "s3://"])
def test_a_bad_mirror_is_a_one_line_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("GDL_MIRROR", value)
    with pytest.raises(GdlError, match=r"^GDL_MIRROR=.*expected") as err:
        settings()
    assert "\n" not in str(err.value)


def test_a_missing_own_catalog_fails_the_cli_in_one_line(tmp_path):
    from conftest import write_params

    write_params(tmp_path)
    env = {"GDL_CATALOG": str(tmp_path / "nope.yaml"), "GDL_ROOT": str(tmp_path), "PATH": str(BIN)}
    run = subprocess.run(
        [str(BIN / "gdl"), "run", "text_lstm"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdl: error:")
    assert f"GDL_CATALOG={str(tmp_path / 'nope.yaml')!r}: No such file or directory" in lines[0]


def test_readme_lists_the_files_a_mirror_holds():
    from conftest import REPO

    from models.inputs.catalog import render_mirror_files

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- mirror-files:start -->\n")[1].split("<!-- mirror-files:end -->")[0]
    assert block == render_mirror_files()
    assert "`train2014.zip` | `coco_train2014`" in block and "`aGBdQyK.jpg` | `sky`" in block
