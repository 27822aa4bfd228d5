"""The dataset catalog and fetching: remote sources (HTTP(S), s3://, local files) and offline ones.

Every dataset names a remote source (the book's) and an offline stand-in that an installed package
ships. A technique's `source` parameter picks one: `remote`, `offline`, or a location of the
user's own (`https://...`, `s3://bucket/key`, `/path/to/file`). Fetches are atomic (temp file,
checked, then renamed), verified (sha256 where known; otherwise the first download pins the hash
and later ones must match) and retried with backoff on transient failures.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.files import (
    GdlError,
    RetryableError,
    env_number,
    file_lock,
    read_json,
    retry,
    s3_endpoint,
    safe_name,
    sha256_file,
    write_json_atomic,
)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    filename: str  # name of the file in the raw directory
    remote: str  # URL or s3:// location of the book's data
    remote_sha256: str | None  # None: pinned by the first download
    offline: Callable[[], bytes]  # bytes of the offline stand-in, from an installed package
    offline_description: str
    kind: str = "text"  # how downloaded bytes are checked before they are accepted


DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    DATASETS[dataset.name] = dataset
    return dataset


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise GdlError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _pydoc_topics() -> bytes:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)).encode("utf-8")


register_dataset(
    Dataset(
        name="nietzsche",
        description="Nietzsche's collected works in English (Chollet 8.1): ~600k characters",
        filename="corpus.txt",
        remote="https://s3.amazonaws.com/text-datasets/nietzsche.txt",
        remote_sha256=None,
        offline=_pydoc_topics,
        offline_description="CPython's pydoc_data.topics: ~465k characters of English prose",
    )
)


# ---------------------------------------------------------------------------------------------
# Content checks


def decode_text(data: bytes, origin: str) -> str:
    """Decode a corpus. Policy: strict UTF-8 (a leading BOM is dropped); NUL bytes mean binary."""
    if not data:
        raise GdlError(f"corpus {origin} is empty")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise GdlError(f"corpus {origin} looks binary (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GdlError(
            f"corpus {origin} is not valid UTF-8 (byte {exc.start}); corpora are read as strict "
            "UTF-8: convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    if not text.strip():
        raise GdlError(f"corpus {origin} holds only whitespace")
    return text


_CHECKS: dict[str, Callable[[bytes, str], object]] = {"text": decode_text}


# ---------------------------------------------------------------------------------------------
# Fetching


class TransientError(Exception):
    """A failure worth retrying (connection refused, timeout, truncated body, HTTP 5xx)."""


@dataclass(frozen=True)
class FetchPolicy:
    attempts: int = 4
    backoff: float = 1.0  # seconds; doubles per retry
    timeout: float = 60.0  # per connection / read

    @classmethod
    def from_env(cls) -> FetchPolicy:
        return cls(
            attempts=env_number("GDL_FETCH_ATTEMPTS", cls.attempts, int),
            backoff=env_number("GDL_FETCH_BACKOFF", cls.backoff, float),
            timeout=env_number("GDL_FETCH_TIMEOUT", cls.timeout, float),
        )


def _http_to(url: str, dest: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as fh:
            expected = resp.headers.get("Content-Length")
            shutil.copyfileobj(resp, fh, 1 << 20)
            got = fh.tell()
        if expected is not None and got != int(expected):
            raise TransientError(f"truncated: got {got} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"HTTP {exc.code}") from None
        raise GdlError(f"download of {redact(url)} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"{type(exc).__name__}: {reason}") from None


def s3_client(timeout: float = 60.0, attempts: int = 1):
    """A boto3 S3 client configured from the environment (AWS_* and GDL_S3_ENDPOINT_URL)."""
    import boto3
    from botocore.config import Config

    endpoint = s3_endpoint()
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def _s3_to(location: str, dest: Path, timeout: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    parsed = urllib.parse.urlparse(location)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise GdlError(f"bad S3 location {location!r}: expected s3://bucket/key")
    try:
        s3_client(timeout).download_file(bucket, key, str(dest))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"):
            raise GdlError(f"download of {location} failed: {code}") from None
        raise TransientError(f"S3 error {code}") from None
    except (EndpointConnectionError, BotoCoreError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from None


def _local_to(location: str, dest: Path) -> None:
    path = Path(location[len("file://") :] if location.startswith("file://") else location)
    path = path.expanduser()
    if not path.is_file():
        raise GdlError(f"source file {path} does not exist")
    shutil.copyfile(path, dest)


def _retrying(
    attempt: Callable[[], None], location: str, policy: FetchPolicy, log: Callable[[str], None]
) -> None:
    """Run one download attempt, retrying transient failures with backoff."""

    def note(n: int, exc: BaseException, delay: float) -> None:
        log(f"download {redact(location)}: attempt {n} failed ({exc}); retrying in {delay:.1f}s")

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
            f"download of {redact(location)} failed after {policy.attempts} attempts: {exc}"
        ) from None


def redact(location: str) -> str:
    """A location fit for logs and reports: no user:password@, no query (presigned signatures)."""
    parsed = urllib.parse.urlsplit(location)
    if not parsed.scheme or "://" not in location:
        return location
    host = parsed.hostname or ""
    if parsed.port:
        host += f":{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


def resolve_location(dataset: Dataset, source: str) -> str:
    if source == "remote":
        return dataset.remote
    if source == "offline":
        return "offline:" + dataset.name
    return source


def _pin_file(raw_root: Path) -> Path:
    return raw_root / "pins.json"


def _check_pin(raw_root: Path, location: str, digest: str) -> None:
    """Trust on first use: remember the digest of a remote location, reject later changes."""
    pins_path = _pin_file(raw_root)
    with file_lock(pins_path.with_suffix(".lock")):
        pins = read_json(pins_path) if pins_path.exists() else {}
        pinned = pins.get(location)
        if pinned is None:
            pins[location] = digest
            write_json_atomic(pins_path, pins)
        elif pinned != digest:
            raise GdlError(
                f"{redact(location)} changed since it was first downloaded (sha256 {digest[:12]}..., "
                f"pinned {pinned[:12]}... in {pins_path}); delete the pin to accept the new content"
            )


def fetch(
    dataset: Dataset,
    source: str,
    dest_dir: Path,
    raw_root: Path,
    policy: FetchPolicy | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Fetch `dataset` from `source` into `dest_dir/<filename>`; return location and sha256.

    Nothing lands in `dest_dir` unless the bytes arrived whole, match the known or pinned hash
    and pass the dataset's content check.
    """
    policy = policy or FetchPolicy.from_env()
    location = resolve_location(dataset, source)
    filename = safe_name(dataset.filename, "dataset file name")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if location.startswith("offline:"):
            tmp.write_bytes(dataset.offline())
        elif location.startswith(("http://", "https://")):
            _retrying(lambda: _http_to(location, tmp, policy.timeout), location, policy, log)
        elif location.startswith("s3://"):
            _retrying(lambda: _s3_to(location, tmp, policy.timeout), location, policy, log)
        elif "://" in location and not location.startswith("file://"):
            raise GdlError(
                f"unsupported source {location!r}: use remote, offline, http(s)://, s3:// or a path"
            )
        else:
            _local_to(location, tmp)

        digest = sha256_file(tmp)
        if location == dataset.remote and dataset.remote_sha256 and digest != dataset.remote_sha256:
            raise GdlError(
                f"{redact(location)}: sha256 {digest} does not match the expected {dataset.remote_sha256}"
            )
        _CHECKS[dataset.kind](tmp.read_bytes(), location)
        if location.startswith(("http://", "https://", "s3://")):
            _check_pin(raw_root, redact(location), digest)
        os.replace(tmp, dest_dir / filename)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"location": redact(location), "sha256": digest, "file": filename}
