"""The sample step: generate from the trained model into the run directory's samples/."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks._prefect import PERSISTED, runner, step_cache_key
from tasks.steps import Manifest

run = runner("sample", lambda t, p, ctx: t.sample(p, ctx))


@task(name="sample", cache_key_fn=step_cache_key, **PERSISTED)
def sample(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> Manifest:
    return run(technique, params, upstream)
