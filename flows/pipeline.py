"""Prefect flows: one technique's pipeline, and the nightly run of all of them."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import resolve_params
from models.core.errors import GdlError
from models.core.registry import techniques
from tasks._prefect import call, report_failure
from tasks.download import download
from tasks.publish import publish
from tasks.sample import sample
from tasks.train import train
from tasks.vectorize import vectorize


@flow(name="technique", flow_run_name="{technique}-{profile}", log_prints=True)
def technique_flow(
    technique: str, profile: str = "demo", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """download -> vectorize -> train -> sample -> publish, each step cached across runs."""
    try:
        params = resolve_params(technique, profile, overrides)
        raw = call(download, technique, params)
        processed = call(vectorize, technique, params, {"download": raw})
        model = call(train, technique, params, {"download": raw, "vectorize": processed})
        samples = call(sample, technique, params, {"download": raw, "vectorize": processed, "train": model})
        upstream = {"download": raw, "vectorize": processed, "train": model, "sample": samples}
        return call(publish, technique, params, upstream)
    except Exception as exc:
        report_failure(technique, exc)  # the UI shows why, not just "Failed"
        raise


@flow(name="nightly", flow_run_name="nightly-{profile}", log_prints=True)
def nightly_flow(profile: str = "demo", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every registered technique, one after another (a failure does not stop the others)."""
    results, failed = {}, []
    for name in techniques():
        state = technique_flow(name, profile, overrides, return_state=True)
        if state.is_completed():
            results[name] = state.result()
        else:
            failed.append(name)
    if failed:
        raise GdlError(f"techniques failed: {', '.join(failed)} (see their error summaries)")
    return results
