"""The download step: fetch a technique's inputs into data/raw (atomic, checked, retried, shared)."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks import shared_storage
from tasks._prefect import PERSISTED, logger, network_retries, step_cache_key
from tasks.steps import Manifest, project_root
from tasks.steps import download as download_inputs


def run(technique: str, params: dict[str, Any], upstream: dict[str, Manifest], dvc: bool = False) -> Manifest:
    """What the task and `gdl stage TECHNIQUE download` both call."""
    manifest = download_inputs(technique, params, dvc=dvc, log=logger().info)
    if not dvc:
        root = project_root()
        for entry in manifest["inputs"].values():
            if shared_storage.push_slot(root, root / entry["dir"], logger().warning):
                logger().info(f"download: mirrored {entry['dir']} to shared storage")
    return manifest


# Network step: fetch() already retries transient failures with backoff; the task retries once
# more on top, for a worker whose network was briefly gone.
@task(name="download", cache_key_fn=step_cache_key, **PERSISTED, **network_retries())
def download(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> Manifest:
    return run(technique, params, upstream)
