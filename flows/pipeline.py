"""Prefect flows: one technique's pipeline, and the nightly run of all of them."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from flows.config import resolve_params
from flows.fanout import chosen
from flows.fanout import fan_out as fan_out_runs
from flows.rehearsal import LAST_RUN, rehearsal_row, render_table
from flows.summary import INCOMPLETE, render_summary, summary_row
from models.core.errors import GdlError, one_line
from tasks._prefect import artifact_key, call, report_failure
from tasks.download import download
from tasks.publish import publish
from tasks.sample import sample
from tasks.train import INCOMPLETE as INCOMPLETE_STATE
from tasks.train import train
from tasks.vectorize import vectorize

# A run's result (its published run, or where its training stopped) is persisted as JSON, so a
# nightly that started it as a deployment run reads it back (flows/fanout.py).
RESULTS = {"persist_result": True, "result_serializer": "json"}


@flow(name="technique", flow_run_name="{technique}-{profile}", log_prints=True, **RESULTS)
def technique_flow(
    technique: str, profile: str = "demo", overrides: dict[str, Any] | None = None, rehearse: bool = False
) -> dict[str, Any]:
    """download -> vectorize -> train -> sample -> publish, each step cached across runs.

    rehearse: run the profile's real data, shapes and networks with its counts capped, never
    publishing, and return the rehearsal's row (flows/rehearsal.py) instead of the published run.

    A train step that stops at its time budget (max_train_minutes) ends the run in the state
    `Incomplete` (a kind of Completed) with what it did; the next run resumes the training.
    """
    try:
        params = resolve_params(technique, profile, overrides, rehearse)
        raw = call(download, technique, params)
        processed = call(vectorize, technique, params, {"download": raw})
        model = call(train, technique, params, {"download": raw, "vectorize": processed})
        if "incomplete" in model:
            create_markdown_artifact(
                key=artifact_key(technique, "incomplete"),
                markdown=f"# {technique}: incomplete\n\n{model['message']}\n",
                description=f"{technique}: stopped at its time budget",
            )
            return Completed(name=INCOMPLETE_STATE, message=model["message"], data=model)
        samples = call(sample, technique, params, {"download": raw, "vectorize": processed, "train": model})
        upstream = {"download": raw, "vectorize": processed, "train": model, "sample": samples}
        if rehearse:
            row = rehearsal_row(technique, profile, overrides, params, upstream)
            create_markdown_artifact(
                key=artifact_key(technique, "rehearsal"),
                markdown=f"# {technique}: rehearsal of the {profile} profile\n\n" + render_table([row]),
                description=f"{technique}: rehearsal",
            )
            return row
        return call(publish, technique, params, upstream)
    except Exception as exc:
        report_failure(technique, exc)  # the UI shows why, not just "Failed"
        raise


def _in_process(names: list[str], profile: str, overrides, rehearse: bool):
    """Each technique as a subflow of this process, one after another: (name, seconds, result,
    error) each."""
    for name in names:
        started = time.perf_counter()
        state = technique_flow(name, profile, overrides, rehearse, return_state=True)
        result, error = None, None
        if state.is_completed():
            result = state.result()
        else:
            try:
                state.result()
            except Exception as exc:  # the one-line reason, for the tables
                error = one_line(exc)[:300]
        yield name, time.perf_counter() - started, result, error


@flow(name="nightly", flow_run_name="nightly-{profile}", log_prints=True, **RESULTS)
def nightly_flow(
    profile: str = "demo",
    overrides: dict[str, Any] | None = None,
    rehearse: bool = False,
    fan_out: bool = False,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every registered technique (or those named in `only`); a failure does not stop the others.
    Ends with the summary artifact `nightly-summary`: each technique's state, duration, quality
    and report. A technique stopped at its budget leaves the nightly `Incomplete`, not failed.

    fan_out: start each technique as a run of its deployment on its work pool, all at once, and
    wait for them (flows/fanout.py); otherwise run them here, one after another.
    rehearse: rehearse each technique (see technique_flow) and end with the rehearsal table,
    failed techniques included, as an artifact.
    """
    names = chosen(only)
    if fan_out:
        from prefect import get_run_logger

        outcomes = fan_out_runs(names, profile, overrides, rehearse, get_run_logger().info)
    else:
        outcomes = _in_process(names, profile, overrides, rehearse)
    results, failed, rows = {}, {}, []
    for name, seconds, result, error in outcomes:
        if error is None:
            results[name] = result
        else:
            failed[name] = error
        rows.append(summary_row(name, seconds, result, error))
    if rehearse:
        LAST_RUN.update(rows=list(results.values()), failed=dict(failed))
        create_markdown_artifact(
            key="nightly-rehearsal",
            markdown=f"# Rehearsal of the {profile} profile\n\n"
            + render_table(list(results.values()), failed),
            description="rehearsal: one row per technique",
        )
    else:
        create_markdown_artifact(
            key="nightly-summary",
            markdown=f"# Nightly, {profile} profile\n\n" + render_summary(rows),
            description="nightly: one row per technique",
        )
    if failed:
        raise GdlError(f"techniques failed: {', '.join(failed)} (see their error summaries)")
    stopped = [r["technique"] for r in rows if r["state"] == INCOMPLETE]
    if stopped:
        message = f"stopped at their budgets, resuming next run: {', '.join(stopped)}"
        return Completed(name=INCOMPLETE_STATE, message=message, data=results)
    return results
