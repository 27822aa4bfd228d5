"""The train step: fit or optimise with checkpoints; progress shown in the Prefect UI."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prefect import task

from models.core.errors import BudgetReached
from models.toolkit.training import Diverged
from tasks._prefect import PERSISTED, artifact_key, in_run, logger, runner, step_cache_key
from tasks.steps import Manifest

# The state name of a run that stopped at its time budget: a kind of Completed, not a failure.
INCOMPLETE = "Incomplete"


def _train(t: Any, p: Any, ctx: Any) -> dict[str, Any]:
    try:
        return t.train(p, ctx)
    except Diverged as exc:  # one line naming the technique and the step
        raise Diverged(f"{t.name} train: {exc}") from None


run = runner("train", _train)


ARTIFACT_EVERY = 5.0  # seconds between progress artifact updates (the UI polls; 10 s at most)


def _progress_artifact(technique: str):
    """A progress bar in the UI, updated every few seconds within an epoch or an optimisation
    loop and at every checkpoint (a no-op outside a Prefect run)."""
    if not in_run():
        return lambda done, total, logs: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact_id = create_progress_artifact(
        progress=0.0, key=artifact_key(technique, "training"), description="training"
    )
    last = [0.0]

    def report(done: float, total: int, logs: Mapping[str, float]) -> None:
        now = time.monotonic()
        if float(done).is_integer() or now - last[0] >= ARTIFACT_EVERY:
            last[0] = now
            update_progress_artifact(artifact_id, progress=min(100.0, 100.0 * done / max(total, 1)))

    return report


def incomplete(technique: str, stop: BudgetReached) -> dict[str, Any]:
    """What a train step that stopped at its budget returns instead of a manifest."""
    return {
        "technique": technique,
        "incomplete": stop.summary(),
        "message": f"{technique}: {stop}; the next run with the same params resumes",
    }


@task(name="train", cache_key_fn=step_cache_key, **PERSISTED)
def train(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> dict[str, Any]:
    """The train step's manifest; at its time budget, `incomplete(...)` (the flow then ends in the
    state `Incomplete`). Its slot has no marker then, so the next run (tasks._prefect.call)
    refreshes this cache entry and resumes from the checkpoint."""
    try:
        return run(technique, params, upstream, progress=_progress_artifact(technique))
    except BudgetReached as stop:
        found = incomplete(technique, stop)
        logger().warning(found["message"])
        return found
