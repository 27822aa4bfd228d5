"""The dataset catalog and fetching: remote sources (HTTP(S), s3://, local files and folders) and
offline ones, checked per kind before anything lands.

The catalog (`models/inputs/catalog.yaml`) names every input a technique can read. A technique's input
picks its source: `remote` (the entry's original), `offline` (a packaged stand-in), or a location
of the user's own: `https://...`, `s3://bucket/key`, `s3://bucket/prefix/` (a folder), a local
file or folder. Archives (`.zip`, `.tar.gz`, ...) given for a folder input are extracted safely
(models/inputs/archives.py). Fetches are atomic (built in a staging folder, checked, then renamed),
verified (sha256 where known; otherwise the first download pins the digest and later ones must
match) and retried with backoff on transient failures only.

The transfer loop is hand-written rather than left to a library's: urllib, requests and boto3
bound each connect and read with a timeout, but none has a minimum-rate cutoff (a server sending a
byte every few seconds never trips a read timeout) or a deadline for a whole download.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.core.errors import GdlError, RetryableError, one_line
from models.core.files import (
    digest_json,
    dir_manifest,
    file_lock,
    read_json,
    retry,
    safe_name,
    safe_relpath,
    sha256_file,
    temp_dir_beside,
    write_json_atomic,
)
from models.core.settings import settings
from models.inputs.catalog import (
    Dataset,
    _local_path,
    expected_sha256,
    mirror_location,
    redact,
    redact_text,
)
from models.inputs.formats import (
    _CHECKS,
)
from models.inputs.s3 import s3_client, s3_error_text, s3_error_transient

# ---------------------------------------------------------------------------------------------
# Transfers


class TransientError(Exception):
    """A failure worth retrying (connection refused, timeout, truncated body, HTTP 5xx)."""


@dataclass(frozen=True)
class FetchPolicy:
    """How long a download may take. `timeout` bounds each connect and read; `min_rate` (bytes/s,
    averaged over `rate_window` seconds) cuts off a server that trickles (a 1 byte/s server never
    trips a per-read timeout) and is retried; `deadline` bounds the whole download, retries
    included, and is not."""

    attempts: int = 4
    backoff: float = 1.0  # seconds; doubles per retry
    timeout: float = 60.0  # per connection / read
    min_rate: float = 1024.0  # bytes per second over each rate window; 0 disables
    rate_window: float = 60.0  # seconds
    deadline: float = 4 * 3600.0  # seconds for the whole download; 0 disables

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """The policy the GDL_FETCH_* settings give (models.core.settings)."""
        current = settings()
        return cls(
            attempts=current.fetch_attempts,
            backoff=current.fetch_backoff,
            timeout=current.fetch_timeout,
            min_rate=current.fetch_min_rate,
            rate_window=current.fetch_rate_window,
            deadline=current.fetch_deadline,
        )


CHUNK = 1 << 16


def _copy_bounded(
    read: Callable[[int], bytes], fh: Any, policy: FetchPolicy, ends: float, shown: str
) -> None:
    """Copy a stream with `read` returning what has arrived (at most n bytes, b"" at the end),
    enforcing the policy's minimum rate (retryable) and the download's deadline `ends` (not)."""
    window_start, window_bytes = time.monotonic(), 0
    while chunk := read(CHUNK):
        fh.write(chunk)
        now = time.monotonic()
        window_bytes += len(chunk)
        if policy.deadline and now > ends:
            raise GdlError(
                f"download of {shown} took longer than its deadline of {policy.deadline:g} s "
                f"(GDL_FETCH_DEADLINE) with {fh.tell()} bytes received"
            )
        if now - window_start >= policy.rate_window:
            rate = window_bytes / (now - window_start)
            if rate < policy.min_rate:
                raise TransientError(
                    f"too slow: {rate:.0f} bytes/s over {now - window_start:.0f} s, below the minimum "
                    f"of {policy.min_rate:g} (GDL_FETCH_MIN_RATE)"
                )
            window_start, window_bytes = now, 0


def _request(url: str) -> urllib.request.Request:
    """An HTTP request for `url`, with `user:password@` sent as Basic authentication (urllib would
    take it for a host and port) and never sent on to where a redirect points."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return urllib.request.Request(url)
    host = parsed.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parsed.port:
        netloc += f":{parsed.port}"
    req = urllib.request.Request(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)))
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    req.add_unredirected_header("Authorization", f"Basic {token}")
    return req


def _http_to(url: str, dest: Path, policy: FetchPolicy, ends: float) -> None:
    shown = redact(url)
    try:
        with urllib.request.urlopen(_request(url), timeout=policy.timeout) as resp, open(dest, "wb") as fh:
            expected = resp.headers.get("Content-Length")
            _copy_bounded(resp.read1, fh, policy, ends, shown)
            got = fh.tell()
        if expected is not None and got != int(expected):
            raise TransientError(f"truncated: got {got} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"HTTP {exc.code}") from None
        if 300 <= exc.code < 400:  # urllib gives up on a loop or after 10 redirects
            raise GdlError(f"download of {shown} failed: redirect loop (HTTP {exc.code})") from None
        raise GdlError(
            f"download of {shown} failed: HTTP {exc.code} {one_line(redact_text(exc.reason))}"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.gaierror) and reason.errno != socket.EAI_AGAIN:
            host = urllib.parse.urlsplit(url).hostname
            raise GdlError(f"download of {shown} failed: cannot resolve host {host!r}") from None
        if isinstance(reason, OSError) and not isinstance(reason, ssl.SSLError):
            raise TransientError(f"{type(reason).__name__}: {one_line(redact_text(reason))}") from None
        # A certificate that does not verify, an unknown URL type: trying again changes nothing.
        raise GdlError(f"download of {shown} failed: {one_line(redact_text(reason))}") from None
    except (http.client.InvalidURL, ValueError):  # a port out of range or not a number
        raise GdlError(f"download of {shown} failed: not a valid URL") from None
    except (http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise TransientError(f"{type(exc).__name__}: {one_line(redact_text(exc))}") from None


def _s3_call(location: str, call: Callable[[], None]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        call()
    except (BotoCoreError, ClientError, OSError) as exc:
        if not s3_error_transient(exc):
            raise GdlError(f"download of {redact(location)} failed: {s3_error_text(exc)}") from None
        raise TransientError(s3_error_text(exc)) from None


def _s3_object_to(client: Any, bucket: str, key: str, dest: Path, policy: FetchPolicy, ends: float) -> None:
    """One object, streamed under the same minimum rate and deadline as an HTTP download."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    raw = getattr(body, "_raw_stream", None)  # urllib3's response: read1 returns what has arrived
    read = raw.read1 if hasattr(raw, "read1") else body.read
    try:
        with open(dest, "wb") as fh:
            _copy_bounded(read, fh, policy, ends, f"s3://{bucket}/{key}")
    finally:
        body.close()


def _s3_to(location: str, dest: Path, policy: FetchPolicy, ends: float) -> None:
    parsed = urllib.parse.urlparse(location)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    _s3_call(location, lambda: _s3_object_to(s3_client(policy.timeout), bucket, key, dest, policy, ends))


def _s3_prefix_to(location: str, dest: Path, policy: FetchPolicy, ends: float) -> None:
    """Every object under an S3 prefix into the folder `dest`; keys are checked like any outside
    name (no traversal) and the count and sizes are bounded like an archive's."""
    from models.inputs.archives import ArchiveLimits

    limits = ArchiveLimits.from_env()
    parsed = urllib.parse.urlparse(location)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    shown = redact(location)

    def copy() -> None:
        client = s3_client(policy.timeout)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        count = total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue
                if any(part.startswith(".") for part in rel.split("/")):
                    continue  # metadata, never content (as in archives)
                count, total = count + 1, total + obj["Size"]
                if count > limits.max_members or total > limits.max_total_bytes:
                    raise GdlError(f"{shown}: more objects or bytes than the archive limits allow")
                if obj["Size"] > limits.max_file_bytes:
                    raise GdlError(f"{shown}: object {rel!r} is larger than the per-file limit")
                target = dest / safe_relpath(rel, f"object name under {shown}")
                target.parent.mkdir(parents=True, exist_ok=True)
                _s3_object_to(client, bucket, obj["Key"], target, policy, ends)
        if count == 0:
            raise GdlError(f"{shown} holds no objects")

    _s3_call(location, copy)


def _local_dir_to(src: Path, dest: Path) -> None:
    """Copy a local folder: regular files only (a symlink could point anywhere), bounded."""
    from models.inputs.archives import ArchiveLimits

    limits = ArchiveLimits.from_env()
    count = total = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise GdlError(f"source folder {src}: {rel.as_posix()} is a symbolic link; copy real files")
        if path.is_dir():
            continue
        count, total = count + 1, total + path.stat().st_size
        if count > limits.max_members or total > limits.max_total_bytes:
            raise GdlError(f"source folder {src} holds more files or bytes than the limits allow")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    if count == 0:
        raise GdlError(f"source folder {src} holds no files")


def _write_content(content: Any, dest: Path) -> None:
    """Write an offline loader's result: bytes, a file to copy, or {relative path: bytes}."""
    if isinstance(content, bytes):
        dest.write_bytes(content)
    elif isinstance(content, Path):
        shutil.copyfile(content, dest)
    else:
        dest.mkdir()
        for rel, data in content.items():
            target = dest / safe_relpath(rel, "offline file name")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _retrying(
    attempt: Callable[[], None], location: str, policy: FetchPolicy, log: Callable[[str], None]
) -> None:
    """Run one download attempt, retrying transient failures with backoff."""

    def note(n: int, exc: BaseException, delay: float) -> None:
        log(f"download {redact(location)}: attempt {n} failed ({redact_text(exc)}); retrying in {delay:.1f}s")

    try:
        retry(
            attempt,
            attempts=policy.attempts,
            backoff=policy.backoff,
            retry_on=(TransientError,),
            on_retry=note,
        )
    except TransientError as exc:
        raise RetryableError(
            f"download of {redact(location)} failed after {policy.attempts} attempts: {redact_text(exc)}"
        ) from None


def _check_pin(raw_root: Path, location: str, digest: str, record: bool) -> None:
    """Trust on first use: reject content that differs from the digest pinned for a remote
    location; with `record`, pin it if nothing is pinned yet. Content is recorded only once it
    passed every check, so a bad first download (an HTML error page) never poisons the pin."""
    pins_path = raw_root / "pins.json"
    with file_lock(pins_path.with_suffix(".lock")):
        pins = read_json(pins_path) if pins_path.exists() else {}
        pinned = pins.get(location)
        if pinned is None and record:
            pins[location] = digest
            write_json_atomic(pins_path, pins)
        elif pinned is not None and pinned != digest:
            raise GdlError(
                f"{redact(location)} changed since it was first downloaded (sha256 {digest[:12]}..., "
                f"pinned {pinned[:12]}... in {pins_path}); delete the pin to accept the new content"
            )


def _transfer(dataset: Dataset, location: str, dest: Path, policy: FetchPolicy, log) -> None:
    """Bring the bytes of `location` to `dest` (a file, or a folder for folder sources)."""
    ends = time.monotonic() + policy.deadline  # the whole download, retries included
    if location.startswith("offline:"):
        from models.inputs import offline

        _write_content(offline.load(dataset.offline.loader, dataset.offline.args), dest)
    elif location.startswith(("http://", "https://")):
        _retrying(lambda: _http_to(location, dest, policy, ends), location, policy, log)
    elif location.startswith("s3://") and location.endswith("/"):
        _retrying(lambda: _s3_prefix_to(location, dest, policy, ends), location, policy, log)
    elif location.startswith("s3://"):
        _retrying(lambda: _s3_to(location, dest, policy, ends), location, policy, log)
    else:
        path = _local_path(location)
        if path.is_dir():
            _local_dir_to(path, dest)
        elif path.is_file():
            shutil.copyfile(path, dest)
        else:
            raise GdlError(f"source {redact(location)} does not exist")


def fetch(
    dataset: Dataset,
    location: str,
    dest_dir: Path,
    raw_root: Path,
    policy: FetchPolicy | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fetch `dataset` from `location` (see `resolve_location`) into `dest_dir/<file>`.

    Nothing lands in `dest_dir` unless the bytes arrived whole, match the known or pinned digest,
    were extracted safely (archives given for a folder input) and pass the kind's content check.
    Returns what the report and the cache need: location (redacted), sha256, file, kind.
    """

    try:
        return _fetch(dataset, location, dest_dir, raw_root, policy, log)
    except (GdlError, RetryableError) as exc:
        if location != mirror_location(dataset):
            raise
        name = location.rsplit("/", 1)[-1]
        hint = f" (GDL_MIRROR: the mirror's {name} stands for catalog entry {dataset.name})"
        raise type(exc)(one_line(exc) + hint) from None


def _fetch(
    dataset: Dataset,
    location: str,
    dest_dir: Path,
    raw_root: Path,
    policy: FetchPolicy | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from models.inputs.archives import archive_format, extract_archive

    policy = policy or FetchPolicy.from_env()
    shown = redact(location)
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = temp_dir_beside(dest_dir, f".{dataset.file}.", ".part")
    try:
        got = work / "download"
        _transfer(dataset, location, got, policy, log)
        if got.is_file():
            digest = sha256_file(got)
            expected = expected_sha256(dataset, location)
            if expected and digest != expected:
                raise GdlError(
                    f"{shown}: sha256 {digest} does not match the catalog's {expected} ({dataset.name}); "
                    "nothing was kept"
                )
        else:
            digest = digest_json(dir_manifest(got))
        remote = location.startswith(("http://", "https://", "s3://"))
        if remote:
            _check_pin(raw_root, shown, digest, record=False)
        result = work / "result"
        if dataset.is_folder and got.is_file():
            if archive_format(got) is None:
                raise GdlError(
                    f"{shown} is neither a folder nor a zip/tar archive; dataset {dataset.name} is a folder "
                    f"of {dataset.kind}"
                )
            extract_archive(got, result, origin=shown)
        else:
            os.replace(got, result)
        _CHECKS[dataset.kind](result, shown)
        if remote:
            _check_pin(raw_root, shown, digest, record=True)
        os.replace(result, dest_dir / safe_name(dataset.file, "dataset file name"))
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
    return {"location": shown, "sha256": digest, "file": dataset.file, "kind": dataset.kind}
