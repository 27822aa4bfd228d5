"""The vectorize step: turn raw data into the arrays training reads, in data/processed."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks._prefect import PERSISTED, runner, step_cache_key
from tasks.steps import Manifest

run = runner("vectorize", lambda t, p, ctx: t.vectorize(p, ctx))


@task(name="vectorize", cache_key_fn=step_cache_key, **PERSISTED)
def vectorize(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> Manifest:
    return run(technique, params, upstream)
