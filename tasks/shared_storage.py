"""Shared storage for many machines: Prefect results and step outputs on S3.

With `GDL_SHARED_STORAGE=s3://bucket/prefix` set on every worker:
- Prefect's task results and cache records go to `s3://bucket/prefix/prefect-results`, so a
  worker on another machine finds the cache entries a first worker wrote;
- every finished step slot (content-addressed, see tasks.steps) is mirrored to
  `s3://bucket/prefix/<slot path>`, so that worker can fetch the bytes a cached result points
  at instead of recomputing them.
The endpoint comes from GDL_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), credentials from the usual
AWS_* variables. Remote file names are checked like any outside input (no path traversal), and
every fetched file must match the sha256 its marker records.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Any

from models.core.errors import GdlError
from models.core.files import (
    digest_json,
    replace_dir,
    retry,
    safe_relpath,
    sha256_file,
    staging_dir,
)
from models.core.settings import settings
from models.inputs.catalog import redact_text
from models.inputs.s3 import s3_client
from tasks.steps import MARKER, RUN_INFO, guarded_slot, is_complete, read_marker

RESULTS = "prefect-results"


def location() -> tuple[str, str] | None:
    """(bucket, prefix) of GDL_SHARED_STORAGE, or None when it is not set."""
    url = settings().shared_storage  # an s3://bucket[/prefix] URL when set
    if not url:
        return None
    parsed = urllib.parse.urlparse(url)
    prefix = parsed.path.strip("/")
    if prefix:
        safe_relpath(prefix, "shared storage prefix")
    return parsed.netloc, prefix


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix, *parts) if p)


@cache
def result_storage() -> str | None:
    """The Prefect storage block (saved server-side, slug returned) for task results and cache
    records, or None for Prefect's local default. It holds the location and endpoint only:
    credentials stay in each worker's environment."""
    where = location()
    if where is None:
        return None
    from prefect.filesystems import RemoteFileSystem

    endpoint = settings().s3_endpoint_url
    options: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    bucket, prefix = where
    basepath = f"s3://{bucket}/{_key(prefix, RESULTS)}"
    name = "gdl-results-" + digest_json([basepath, endpoint])[:12]
    RemoteFileSystem(basepath=basepath, settings=options).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def push_slot(root: Path, out: Path, log=print) -> bool:
    """Mirror a finished slot (files, then its marker last). False when not configured or when
    the upload failed: the step itself succeeded, so a failed mirror is a warning, not an error."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = location()
    marker = read_marker(out)
    if where is None or marker is None:
        return False
    bucket, prefix = where
    client = s3_client()
    rel = out.relative_to(root).as_posix()

    def upload() -> None:
        for name in marker["files"]:
            client.upload_file(str(out / name), bucket, _key(prefix, rel, name))
        if (out / RUN_INFO).exists():
            client.upload_file(str(out / RUN_INFO), bucket, _key(prefix, rel, RUN_INFO))
        client.put_object(Bucket=bucket, Key=_key(prefix, rel, MARKER), Body=(out / MARKER).read_bytes())

    try:
        retry(upload, attempts=3, backoff=1.0, retry_on=(BotoCoreError, ClientError, OSError))
    except (BotoCoreError, ClientError, OSError) as exc:
        log(
            f"could not mirror {rel} to shared storage ({type(exc).__name__}); "
            "other machines will recompute it"
        )
        return False
    return True


class _Unusable(Exception):
    """The shared copy of a slot is missing, foreign or damaged: recompute instead."""


def _fetch_slot(client, bucket: str, base: str, out: Path, marker: dict, body: bytes) -> None:
    """Download a slot's files (each checked against the marker), then the marker; all or nothing."""
    from botocore.exceptions import ClientError

    with staging_dir(out, sweep=True) as tmp:
        for name, entry in marker["files"].items():
            dest = tmp / safe_relpath(name, "shared file name")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, f"{base}/{name}", str(dest))
            if sha256_file(dest) != entry["sha256"]:
                raise _Unusable(f"{name} does not match its recorded sha256")
        with contextlib.suppress(ClientError):  # provenance only: a slot without it is still whole
            client.download_file(bucket, f"{base}/{RUN_INFO}", str(tmp / RUN_INFO))
        (tmp / MARKER).write_bytes(body)
        replace_dir(tmp, out)


def pull_slot(root: Path, out: Path, key: str, log=print) -> bool:
    """Fetch the slot `out` for step key `key` from shared storage; True if it is now complete.
    A missing, foreign or damaged copy is never used: the step is recomputed instead."""
    where = location()
    if where is None:
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = where
    client = s3_client()
    rel = out.relative_to(root).as_posix()
    try:
        body = client.get_object(Bucket=bucket, Key=_key(prefix, rel, MARKER))["Body"].read()
        marker = json.loads(body)
        if not isinstance(marker, dict) or marker.get("key") != key or marker.get("dir") != rel:
            return False
        with guarded_slot(root, out):  # a failed fetch leaves no lock or empty folder
            if is_complete(out, key):  # another run of this machine fetched or built it meanwhile
                return True
            _fetch_slot(client, bucket, _key(prefix, rel), out, marker, body)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
            log(f"shared copy of {rel} unreadable ({redact_text(exc)}); recomputing")
        return False
    except (BotoCoreError, OSError, ValueError, LookupError, TypeError, GdlError, _Unusable) as exc:
        log(f"shared copy of {rel} not used ({type(exc).__name__}: {redact_text(exc)}); recomputing")
        return False
    return True
