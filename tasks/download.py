"""The download step: fetch a technique's dataset into data/raw (atomic, checked, retried)."""

from __future__ import annotations

from typing import Any

from prefect import task

from models.datasets import fetch, get_dataset
from tasks._prefect import TASK_RETRIES, runner, step_cache_key, transient_only
from tasks.steps import Manifest, data_dir


def _download(t, p, ctx):
    name, source = t.dataset_of(p)
    return fetch(get_dataset(name), source, ctx.out, data_dir() / "raw", log=ctx.log)


run = runner("download", _download)


# Network step: fetch() already retries transient failures with backoff; the task retries once
# more on top, for a worker whose network was briefly gone.
@task(
    name="download",
    cache_key_fn=step_cache_key,
    persist_result=True,
    result_serializer="json",
    retries=TASK_RETRIES,
    retry_condition_fn=transient_only,
    retry_delay_seconds=10,
)
def download(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> Manifest:
    return run(technique, params, upstream)
