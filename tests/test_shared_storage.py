"""Shared storage for many machines: a second machine re-uses the first one's cached steps."""

from __future__ import annotations

import pytest
from conftest import cached_steps as _cached
from conftest import cli_env, gdl, write_params


@pytest.mark.slow
def test_a_second_machine_hits_the_cache_of_the_first_through_s3(project, tmp_path, prefect_api, s3):
    import os

    client, bucket = s3
    machine_b = tmp_path / "machine-b"
    machine_b.mkdir()
    write_params(machine_b)
    shared = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GDL_S3"))}
    shared.update(PREFECT_API_URL=prefect_api, GDL_SHARED_STORAGE=f"s3://{bucket}/shared")

    first = gdl(project, "run", "text_lstm", env=cli_env(project, **shared))
    assert first.returncode == 0, first.stderr[-3000:]
    assert _cached(first.stderr) == set()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("shared/prefect-results/") for k in keys)
    assert any(k.startswith("shared/data/checkpoints/text_lstm/") for k in keys)

    # Machine B: its own data/ and its own local Prefect storage; only S3 and the server shared.
    second = gdl(machine_b, "run", "text_lstm", env=cli_env(machine_b, **shared))
    assert second.returncode == 0, second.stderr[-3000:]
    assert _cached(second.stderr) >= {"download", "vectorize", "train", "sample"}
    assert list((machine_b / "data" / "checkpoints" / "text_lstm").glob("*/model.keras"))
    run_dir = second.stdout.strip().splitlines()[-1]
    assert run_dir == first.stdout.strip().splitlines()[-1]
    assert (machine_b / run_dir / "report.html").is_file()


def test_a_damaged_shared_copy_is_never_used(project, steps, s3, monkeypatch):
    from tasks import shared_storage
    from tasks.steps import read_marker

    client, bucket = s3
    monkeypatch.setenv("GDL_SHARED_STORAGE", f"s3://{bucket}/shared")
    processed = project / steps["upstream"]["vectorize"]["dir"]
    key = read_marker(processed)["key"]
    assert shared_storage.push_slot(project, processed)
    client.put_object(
        Bucket=bucket, Key=f"shared/{steps['upstream']['vectorize']['dir']}/corpus.npy", Body=b"tampered"
    )
    import shutil

    shutil.rmtree(processed)
    notes = []
    assert shared_storage.pull_slot(project, processed, key, notes.append) is False
    assert not processed.exists() and "sha256" in notes[0]
