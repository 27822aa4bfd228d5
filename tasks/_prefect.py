"""Prefect glue shared by the task modules: the cache key, logging and artifacts outside a run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prefect.context import TaskRunContext

from models.core.errors import GdlError, RetryableError
from models.core.settings import settings
from tasks.steps import (
    Manifest,
    execute,
    expected_outputs,
    is_complete,
    project_root,
    run_dir_of,
    step_key,
)

# Every step's result is a small JSON manifest, persisted so a later run can take it from the cache.
PERSISTED = {"persist_result": True, "result_serializer": "json"}


def transient_only(task, task_run, state) -> bool:
    """Retry condition: network trouble is retried; a bad input (any other GdlError) is not."""
    try:
        state.result()
    except RetryableError:
        return True
    except GdlError:
        return False
    except Exception:
        return True
    return False


def network_retries() -> dict:
    """Task options of the network steps (download, publish): retried once more on top of their
    own retries, for a worker whose network was briefly gone, on transient errors only
    (GDL_TASK_RETRIES times)."""
    return {
        "retries": settings().task_retries,
        "retry_condition_fn": transient_only,
        "retry_delay_seconds": 10,
    }


def artifact_key(technique: str, name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: `text-lstm-summary`."""
    return f"{technique}-{name}".replace("_", "-").lower()


def step_cache_key(context: TaskRunContext, parameters: Mapping[str, Any]) -> str:
    """Cache on (technique, step, params of this and earlier steps, upstream digests, code)."""
    return step_key(parameters["technique"], context.task.name, parameters["params"], parameters["upstream"])


def in_run() -> bool:
    from prefect.context import FlowRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def logger():
    """Prefect's run logger inside a run; the `gdl` logger when called by `gdl stage`."""
    if in_run():
        from prefect import get_run_logger

        return get_run_logger()
    return logging.getLogger("gdl")


def call(
    task,
    technique: str,
    params: Mapping[str, Any],
    upstream: Mapping[str, Manifest] | None = None,
    **kwargs: Any,
) -> Manifest:
    """Call a step task. If the bytes a cached result points at are not on this machine, fetch
    them from shared storage (when configured), else recompute them."""
    from tasks import shared_storage

    upstream = dict(upstream or {})
    if task.name == "publish":
        complete = (run_dir_of(project_root(), upstream) / "manifest.json").exists()
    else:
        complete = all(
            is_complete(out, key) or shared_storage.pull_slot(project_root(), out, key, logger().warning)
            for key, out in expected_outputs(technique, task.name, params, upstream)
        )
    if not complete:
        task = task.with_options(refresh_cache=True)
    storage = shared_storage.result_storage()
    if storage is not None:
        task = task.with_options(result_storage=storage)
    return task(technique=technique, params=dict(params), upstream=upstream, **kwargs)


def runner(step: str, body):
    """`run(technique, params, upstream, dvc=False, **kw)` for one step: what the task and
    `gdl stage` both call."""

    def run(
        technique: str,
        params: Mapping[str, Any],
        upstream: Mapping[str, Manifest],
        dvc: bool = False,
        **kwargs: Any,
    ) -> Manifest:
        from tasks import shared_storage

        manifest = execute(technique, step, params, upstream, body, dvc=dvc, log=logger().info, **kwargs)
        if not dvc and shared_storage.push_slot(
            project_root(), project_root() / manifest["dir"], logger().warning
        ):
            logger().info(f"{step}: mirrored {manifest['dir']} to shared storage")
        return manifest

    return run


def report_failure(technique: str, exc: BaseException) -> None:
    """An error-summary artifact for the UI: what failed and the one-line reason."""
    from prefect.artifacts import create_markdown_artifact

    from models.inputs.catalog import redact_text

    create_markdown_artifact(
        key=artifact_key(technique, "error"),
        markdown=f"# {technique} failed\n\n**{type(exc).__name__}**: {redact_text(exc)}\n",
        description=f"{technique}: error summary",
    )
