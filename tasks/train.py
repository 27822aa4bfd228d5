"""The train step: fit the model with a checkpoint per epoch; progress shown in the Prefect UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task

from tasks._prefect import artifact_key, in_run, runner, step_cache_key
from tasks.steps import Manifest

run = runner("train", lambda t, p, ctx: t.train(p, ctx))


def _progress_artifact(technique: str):
    """A progress bar in the UI, updated after every epoch (a no-op outside a Prefect run)."""
    if not in_run():
        return lambda done, total, logs: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(
        progress=0.0, key=artifact_key(technique, "training"), description="training"
    )

    def report(done: int, total: int, logs: Mapping[str, float]) -> None:
        update_progress_artifact(artifact_id, progress=100.0 * done / total)

    return report


@task(name="train", cache_key_fn=step_cache_key, persist_result=True, result_serializer="json")
def train(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> Manifest:
    return run(technique, params, upstream, progress=_progress_artifact(technique))
