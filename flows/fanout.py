"""The nightly's fan-out: every technique as a flow run of its own deployment, on its own work
pool, all started at once and waited for.

Why deployments and not concurrent subflows in the nightly's process: a subflow runs where its
parent runs, so concurrent subflows would share one worker's machine and GPUs; a deployment run
goes to its work pool, where any worker that joined the pool (one per GPU, on any machine) takes it
and the pool's concurrency limit (the number of GPUs) queues the rest. The nightly itself runs on
a pool of its own (`nightly`), so while it waits it holds no slot of the pools it fans out to.
The technique runs are linked to the nightly as its subflows in the UI.

A run's result (its report, its quality record) is read back through Prefect's result storage:
on one machine the local one, across machines the shared S3 storage (GDL_SHARED_STORAGE). When
it cannot be read, the summary still has the run's state, duration and message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from models.core.errors import one_line
from models.core.registry import known, techniques

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POLL_SECONDS = 5.0


def deployment_name(technique: str, profile: str) -> str:
    """`technique/<name>` (full profile, gpu pool) or `technique/<name>-demo` (cpu pool)."""
    return f"technique/{technique}" if profile == "full" else f"technique/{technique}-demo"


def form_values(technique: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The nightly's `{"<technique>.<param>": value}` overrides as the technique form's fields."""
    prefix = f"{technique}."
    return {k[len(prefix) :]: v for k, v in (overrides or {}).items() if k.startswith(prefix)}


def _result(state) -> Any:
    try:
        return state.result(raise_on_failure=False)
    except Exception:  # not readable here (another machine's local storage): state only
        return None


def outcome(technique: str, run) -> tuple[dict[str, Any] | None, str | None]:
    """(result, error) of a finished technique run, as `flows.summary.summary_row` takes them."""
    state = run.state
    if state.type.value != "COMPLETED":
        return None, one_line(state.message or state.type.value.lower())[:300]
    result = _result(state)
    if state.name == "Incomplete" and not (isinstance(result, dict) and "incomplete" in result):
        return {"technique": technique, "incomplete": None, "message": state.message}, None
    if not isinstance(result, dict):
        return {"report": "(result not readable here: set GDL_SHARED_STORAGE)"}, None
    return result, None


def fan_out(
    names: list[str], profile: str, overrides: Mapping[str, Any] | None, rehearse: bool, log
) -> list[tuple[str, float, dict[str, Any] | None, str | None]]:
    """Start every technique's deployment run, wait for all; (name, seconds, result, error) each."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    started, failed = {}, {}
    for name in names:
        try:
            run = run_deployment(
                deployment_name(name, profile),
                parameters={"profile": profile, "rehearse": rehearse, **form_values(name, overrides)},
                timeout=0,  # start it and go on: all run at once, within their pools' limits
                as_subflow=True,
            )
            started[name] = run.id
            log(f"{name}: flow run {run.name} on {deployment_name(name, profile)}")
        except Exception as exc:  # no such deployment, values the form refuses, server trouble
            failed[name] = one_line(exc)[:300]
            log(f"{name}: could not start: {failed[name]}")
    finished: dict[str, Any] = {}
    seen: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while len(finished) < len(started):
            for name, run_id in started.items():
                if name in finished:
                    continue
                run = client.read_flow_run(run_id)
                if seen.get(name) != run.state.name:
                    seen[name] = run.state.name
                    log(f"{name}: {run.state.name}")
                if run.state.type.value in FINAL:
                    finished[name] = run
            if len(finished) < len(started):
                time.sleep(POLL_SECONDS)
    rows = []
    for name in names:
        if name in failed:
            rows.append((name, 0.0, None, failed[name]))
            continue
        run = finished[name]
        seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
        rows.append((name, seconds, *outcome(name, run)))
    return rows


def chosen(selected: list[str] | None) -> list[str]:
    """The techniques a nightly runs: all registered ones, or the ones it names (checked)."""
    if not selected:
        return list(techniques())
    wanted = set(known(selected))
    return [name for name in techniques() if name in wanted]
