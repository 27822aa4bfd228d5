"""The publish step: assemble the run directory, then copy it to a local folder or an S3 bucket.

Run directory (`data/runs/<technique>/<run_id>/`): params.json, metrics.json, history.csv,
samples/, the technique's plots, report.html (self-contained) and manifest.json (every file
with size and sha256), written last. Publishing uploads every file under
`<prefix>/<technique>/<run_id>/`, manifest.json last, then `<prefix>/<technique>/latest.json`, so
a reader who follows `latest.json` never sees a half-published run. Published files are never
overwritten with other bytes: a run re-published (its report rebuilt) goes to
`<run_id>-<created_at>/` and latest.json's `report`/`manifest` point there.

Configuration (models.core.settings): GDL_S3_BUCKET (unset: publish to the local folder
GDL_PUBLISH_DIR), GDL_S3_PREFIX, GDL_S3_ENDPOINT_URL, GDL_PUBLISH_ATTEMPTS / _BACKOFF / _TIMEOUT;
credentials from the usual boto3 variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).
"""

from __future__ import annotations

import json
import mimetypes
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task

from models.core.errors import GdlError, RetryableError
from models.core.files import (
    dir_manifest,
    replace_dir,
    retry,
    safe_name,
    safe_relpath,
    staging_dir,
    write_bytes_atomic,
    write_json_atomic,
)
from models.core.registry import get
from models.core.settings import folder_problem, settings
from models.inputs.catalog import redact
from models.inputs.s3 import s3_client, s3_error_text, s3_error_transient
from models.reporting.gallery import GALLERY, collect_runs, local_runs, render_gallery
from models.reporting.report import (
    RESERVED,
    THUMBNAIL_FILE,
    Provenance,
    artifact_plan,
    history_csv,
    render_html,
    report_files,
    thumbnail_png,
)
from tasks._prefect import PERSISTED, artifact_key, in_run, logger, network_retries
from tasks.steps import MARKER, Manifest, data_dir, git_version, local_dir, project_root, run_dir_of

MANIFEST = "manifest.json"
LATEST = "latest.json"


class PublishError(RetryableError):
    """Publishing failed after retries; the local run directory is intact."""


# ---------------------------------------------------------------------------------------------
# Run directory


def _public(value: Any) -> Any:
    """A parameter value fit for a published page: URLs lose credentials and query strings."""
    if isinstance(value, str):  # redact() changes only what looks like a location with secrets
        return redact(value)
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def provenance(
    technique: str, p: Any, upstream: Mapping[str, Manifest], run_id: str, created_at: str
) -> Provenance:
    """Where the run came from: params, code, when each step ran, which data it read."""
    root = project_root()
    steps = []
    for name in ("download", "vectorize", "train", "sample"):
        manifest = upstream.get(name)
        if manifest is None:
            continue
        if name == "download":
            for input_name, entry in manifest["inputs"].items():
                steps.append(
                    {
                        "step": f"download {input_name}",
                        "started_at": entry.get("started_at", ""),
                        "seconds": entry.get("seconds", ""),
                        "code": "",
                        "output": entry["dir"],
                    }
                )
            continue
        steps.append(
            {
                "step": name,
                "started_at": manifest.get("started_at", ""),
                "seconds": manifest.get("seconds", ""),
                "code": manifest.get("git", ""),
                "output": manifest["dir"],
            }
        )
    inputs = [
        {"input": name, "dataset": e["dataset"], "source": e["source"], "sha256": e["sha256"]}
        for name, e in upstream.get("download", {"inputs": {}})["inputs"].items()
    ]
    return Provenance(
        technique=technique,
        run_id=run_id,
        created_at=created_at,
        params={k: _public(v) for k, v in p.model_dump(mode="json").items()},
        git=git_version(root),
        steps=steps,
        inputs=inputs,
    )


def assemble(
    technique: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest], run: Path
) -> dict[str, Any]:
    """Write the run directory's files next to its samples/; manifest.json last."""
    root = project_root()
    t = get(technique)
    p = t.params_model(**params)
    # Manifests may come from shared storage: their dirs are checked (under data/, safe names).
    report = t.report(p, {name: local_dir(root, m) for name, m in upstream.items() if "dir" in m})
    run_id = safe_name(run.name, "run id")
    created_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    prov = provenance(technique, p, upstream, run_id, created_at)
    files = report_files(report)
    # A run directory re-published (the DVC slot, or the same samples after a report change)
    # must not keep files of the earlier report: they would be listed and published as current.
    for old in run.iterdir():
        if (
            old.is_file()
            and not old.name.startswith(".")
            and old.name not in files
            and old.name not in RESERVED
        ):
            old.unlink()
    write_json_atomic(run / "params.json", {"technique": technique, "params": prov.params})
    # The weights a run used belong with its numbers (a metric of every technique that has any).
    metrics = {**report.metrics, **({"weights": report.weights} if report.weights else {})}
    if report.quality is not None:
        metrics["quality"] = report.quality.as_dict()
    write_json_atomic(run / "metrics.json", metrics)
    thumbnail = thumbnail_png(report, files)
    if thumbnail is not None:
        write_bytes_atomic(run / THUMBNAIL_FILE, thumbnail)
    else:
        (run / THUMBNAIL_FILE).unlink(missing_ok=True)
    write_bytes_atomic(run / "history.csv", history_csv(report.history, t.history_x))
    for name, data in files.items():
        write_bytes_atomic(run / name, data)
    write_bytes_atomic(run / "report.html", render_html(report, prov, files).encode())
    manifest = {
        "technique": technique,
        "run_id": run_id,
        "created_at": created_at,
        "headline": list(t.headline),
        "files": dir_manifest(run, exclude=(MANIFEST,)),
    }
    write_json_atomic(run / MANIFEST, manifest)
    return {"manifest": manifest, "report": report, "provenance": prov, "files": files}


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """Where runs are published: an S3 bucket + prefix, or a local folder."""

    bucket: str | None
    prefix: str
    local_dir: Path

    @classmethod
    def from_env(cls) -> Target:
        current = settings()
        prefix = current.s3_prefix.strip("/")
        if prefix:
            safe_relpath(prefix, "S3 prefix")
        local = current.publish_dir or data_dir() / "published"
        problem = None if current.s3_bucket else folder_problem(local)
        if problem:  # the setting was checked when read: this is a change since, or the default
            raise GdlError(f"cannot publish to the folder {local}: {problem}")
        return cls(current.s3_bucket, prefix, local)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.bucket else str(self.local_dir)

    def identity(self) -> dict[str, Any]:
        endpoint = settings().s3_endpoint_url
        return {"target": self.describe(), "endpoint": endpoint if self.bucket else None}


def _content_type(name: str) -> str:
    kind, _ = mimetypes.guess_type(name)
    if name.endswith((".txt", ".csv", ".html", ".json")):
        kind = (kind or "text/plain") + "; charset=utf-8"
    return kind or "application/octet-stream"


def _latest(technique: str, run_id: str, manifest: Mapping[str, Any], key_id: str | None = None) -> bytes:
    """latest.json: the run, and where its files are (`key_id`: a re-published run's own prefix)."""
    key_id = key_id or run_id
    return json.dumps(
        {
            "technique": technique,
            "run_id": run_id,
            "created_at": manifest["created_at"],
            "report": f"{key_id}/report.html",
            "manifest": f"{key_id}/{MANIFEST}",
        },
        indent=2,
    ).encode()


def publish_local(target: Target, technique: str, run: Path, manifest: Mapping[str, Any]) -> str:
    folder = target.local_dir / technique

    def read(key_id: str) -> bytes | None:
        try:
            return (folder / key_id / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None

    key_id, done = _run_key(read, target, manifest, (run / MANIFEST).read_bytes())
    dest = folder / key_id
    if not done:  # a folder without a manifest is listed nowhere: replacing it changes no reader
        with staging_dir(dest) as tmp:
            shutil.copytree(run, tmp, ignore=shutil.ignore_patterns(MARKER, ".*"), dirs_exist_ok=True)
            replace_dir(tmp, dest)
    write_bytes_atomic(folder / LATEST, _latest(technique, manifest["run_id"], manifest, key_id))
    # The published gallery lists every run in the publish folder, whoever published it.
    write_bytes_atomic(target.local_dir / GALLERY, render_gallery(local_runs(target.local_dir)).encode())
    return str(dest / "report.html")


def publish_s3(target: Target, technique: str, run: Path, manifest: Mapping[str, Any], log=print) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    current = settings()
    attempts, backoff = current.publish_attempts, current.publish_backoff
    client = s3_client(timeout=current.publish_timeout, attempts=1)
    intact = f"the run directory {run} is intact and {technique}/{LATEST} was not changed"

    def call(key: str, once: Callable[[], Any], what: str = "upload") -> Any:
        def note(n: int, exc: BaseException, delay: float) -> None:
            log(
                f"{what} of {key} failed (attempt {n} of {attempts}: {s3_error_text(exc)}); "
                f"retry in {delay:.1f}s"
            )

        try:
            return retry(
                once,
                attempts=attempts,
                backoff=backoff,
                retry_on=(BotoCoreError, ClientError),
                retry_if=s3_error_transient,
                on_retry=note,
            )
        except (BotoCoreError, ClientError) as exc:
            if not s3_error_transient(exc):  # a missing bucket, denied access: no retry helps
                raise GdlError(
                    f"publishing to {target.describe()} failed: {s3_error_text(exc)}; {intact}"
                ) from None
            raise PublishError(
                f"publishing to {target.describe()} failed after {attempts} attempts "
                f"({s3_error_text(exc)}); {intact}"
            ) from None

    def put(key: str, body: bytes, name: str) -> None:
        def once() -> None:
            client.put_object(Bucket=target.bucket, Key=key, Body=body, ContentType=_content_type(name))

        call(key, once)

    def read(key: str) -> bytes | None:
        def once() -> bytes | None:
            try:
                return client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        return call(key, once, "read")

    ours = (run / MANIFEST).read_bytes()
    key_id, done = _run_key(
        lambda key_id: read("/".join(p for p in (target.prefix, technique, key_id, MANIFEST) if p)),
        target,
        manifest,
        ours,
    )
    base = "/".join(p for p in (target.prefix, technique, key_id) if p)
    if not done:  # files first, the manifest last: a prefix without one is listed nowhere
        for rel in manifest["files"]:
            put(f"{base}/{safe_relpath(rel, 'file name')}", (run / rel).read_bytes(), rel)
        put(f"{base}/{MANIFEST}", ours, MANIFEST)
    latest_key = "/".join(p for p in (target.prefix, technique, LATEST) if p)
    put(latest_key, _latest(technique, manifest["run_id"], manifest, key_id), LATEST)
    # The published gallery lists every run in the bucket, whichever machine published it.
    try:
        gallery = render_gallery(_bucket_runs(client, target)).encode()
    except (BotoCoreError, ClientError) as exc:
        raise PublishError(
            f"run published to {target.describe()}, but listing the bucket for the gallery failed "
            f"({type(exc).__name__}); {technique}/{LATEST} points at the new run"
        ) from None
    put("/".join(p for p in (target.prefix, GALLERY) if p), gallery, GALLERY)
    return f"s3://{target.bucket}/{base}/report.html"


def _run_key(
    read: Callable[[str], bytes | None], target: Target, manifest: Mapping[str, Any], ours: bytes
) -> tuple[str, bool]:
    """Where the run's files go (`<run_id>`, a folder or key prefix), and whether they are there
    already; `read(key_id)` gives the manifest published there, or None. A published run never
    changes under a reader: when `<run_id>` holds a manifest with other bytes (a re-published run,
    report.html rebuilt), the run goes to `<run_id>-<its created_at>` instead."""
    run_id = manifest["run_id"]
    stamp = "".join(c for c in str(manifest["created_at"]) if c.isalnum())
    for key_id in (run_id, safe_name(f"{run_id}-{stamp}", "run id")):
        there = read(key_id)
        if there is None:
            return key_id, False
        if there == ours:
            return key_id, True
    raise GdlError(
        f"run {run_id} is already published to {target.describe()} as {run_id} and {run_id}-{stamp} "
        "with other contents; nothing was changed"
    )


def _bucket_runs(client, target: Target) -> dict[str, list[dict[str, Any]]]:
    """The runs published under the target's prefix (keys from the bucket are checked)."""
    from botocore.exceptions import ClientError

    base = f"{target.prefix}/" if target.prefix else ""
    ids = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=base):
        for obj in page.get("Contents", []):
            parts = obj["Key"][len(base) :].split("/")
            if len(parts) == 3 and parts[2] == MANIFEST:
                try:
                    ids.append((safe_name(parts[0], "technique"), safe_name(parts[1], "run id")))
                except GdlError:
                    continue  # not one of ours: never used to build a key or a link

    def read(rel: str) -> bytes:
        try:
            return client.get_object(Bucket=target.bucket, Key=base + rel)["Body"].read()
        except ClientError as exc:
            raise FileNotFoundError(rel) from exc

    return collect_runs(ids, read)


# ---------------------------------------------------------------------------------------------
# The step


def _artifacts(technique: str, run: Path, built: Mapping[str, Any], published: str) -> None:
    """What the Prefect UI shows, as the report describes it (models.reporting.report.artifact_plan)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    where = (
        f"Run directory: `{run}`  \nPublished: `{published}`  \n"
        f"Gallery of all runs: `{run.parent.parent / GALLERY}`"
    )
    for item in artifact_plan(built["report"], built["provenance"], built["files"], where):
        key = artifact_key(technique, item["key"])
        if item["kind"] == "table":
            create_table_artifact(key=key, table=item["content"], description=item["description"])
        else:
            create_markdown_artifact(key=key, markdown=item["content"], description=item["description"])


def run(
    technique: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest], dvc: bool = False
) -> dict[str, Any]:
    """Assemble the run directory beside the samples, then publish it. Returns run dir and URL."""
    root = project_root()
    run_path = run_dir_of(root, upstream)
    log = logger()
    built = assemble(technique, params, upstream, run_path)
    write_bytes_atomic(
        run_path.parent.parent / GALLERY, render_gallery(local_runs(run_path.parent.parent)).encode()
    )
    target = Target.from_env()
    log.info(f"publishing {run_path.relative_to(root)} to {target.describe()}")
    if target.bucket:
        published = publish_s3(target, technique, run_path, built["manifest"], log=log.warning)
    else:
        published = publish_local(target, technique, run_path, built["manifest"])
    if in_run():
        _artifacts(technique, run_path, built, published)
    return {
        "gallery": (run_path.parent.parent / GALLERY).relative_to(root).as_posix(),
        "run_dir": run_path.relative_to(root).as_posix(),
        "report": (run_path / "report.html").relative_to(root).as_posix(),
        "published": published,
        "metrics": built["report"].metrics,
        "quality": built["report"].quality.as_dict() if built["report"].quality else None,
    }


def _publish_key(context, parameters) -> str:
    from models.core.files import digest_json
    from tasks.steps import step_key

    return digest_json(
        {
            "step": step_key(
                parameters["technique"], "publish", parameters["params"], parameters["upstream"]
            ),
            "target": Target.from_env().identity(),
        }
    )


# Network step: uploads retry with backoff inside; one more task-level retry for a worker hiccup.
@task(name="publish", cache_key_fn=_publish_key, **PERSISTED, **network_retries())
def publish(technique: str, params: dict[str, Any], upstream: dict[str, Manifest]) -> dict:
    return run(technique, params, upstream)
