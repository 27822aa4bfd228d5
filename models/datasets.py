"""The dataset catalog and fetching: remote sources (HTTP(S), s3://, local files and folders) and
offline ones, checked per kind before anything lands.

The catalog (`models/catalog.yaml`) names every input a technique can read. A technique's input
picks its source: `remote` (the entry's original), `offline` (a packaged stand-in), or a location
of the user's own: `https://...`, `s3://bucket/key`, `s3://bucket/prefix/` (a folder), a local
file or folder. Archives (`.zip`, `.tar.gz`, ...) given for a folder input are extracted safely
(models/archives.py). Fetches are atomic (built in a staging folder, checked, then renamed),
verified (sha256 where known; otherwise the first download pins the digest and later ones must
match) and retried with backoff on transient failures only.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from models.files import (
    GdlError,
    RetryableError,
    digest_json,
    dir_manifest,
    env_number,
    file_lock,
    read_json,
    retry,
    s3_endpoint,
    safe_name,
    safe_relpath,
    sha256_file,
    temp_dir_beside,
    write_json_atomic,
)

CATALOG = Path(__file__).resolve().parent / "catalog.yaml"
Kind = Literal["text", "image", "images", "arrays", "archive", "weights"]
FOLDER_KINDS = ("images", "archive")  # inputs that land as a folder, not one file
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class Offline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loader: str
    args: dict[str, Any] = {}
    description: str


class Dataset(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    description: str
    file: str
    remote: str | None = None
    sha256: str | None = None
    offline: Offline | None = None

    @property
    def is_folder(self) -> bool:
        return self.kind in FOLDER_KINDS


@cache
def _catalog(mtime_ns: int) -> dict[str, Dataset]:
    data = yaml.safe_load(CATALOG.read_text()) or {}
    if not isinstance(data, dict):
        raise GdlError(f"{CATALOG} must map dataset names to entries")
    found = {}
    for name, entry in data.items():
        try:
            if not str(name).isidentifier() or name == "dvc":  # data/raw/dvc holds DVC's slots
                raise GdlError(f"{CATALOG}: dataset name {name!r} must be an identifier other than 'dvc'")
            found[name] = Dataset(name=name, **(entry or {}))
            safe_name(found[name].file, f"file name of dataset {name}")
        except ValidationError as exc:
            first = exc.errors()[0]
            raise GdlError(
                f"{CATALOG}: entry {name!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
    return found


def catalog() -> dict[str, Dataset]:
    """Every catalog entry (re-read when catalog.yaml changes)."""
    return _catalog(CATALOG.stat().st_mtime_ns)


def get_dataset(name: str) -> Dataset:
    entries = catalog()
    if name not in entries:
        raise GdlError(f"unknown dataset {name!r}; available: {', '.join(sorted(entries))}")
    return entries[name]


def catalog_entry(name: str) -> dict[str, Any]:
    """The raw catalog entry as written in catalog.yaml (what DVC tracks as a parameter)."""
    return yaml.safe_load(CATALOG.read_text())[name]


# ---------------------------------------------------------------------------------------------
# Sources


def redact(location: str) -> str:
    """A location fit for logs and reports: no user:password@, no query (presigned signatures)."""
    parsed = urllib.parse.urlsplit(location)
    if not parsed.scheme or "://" not in location:
        return location
    host = parsed.hostname or ""
    if parsed.port:
        host += f":{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", ""))


def _local_path(location: str) -> Path:
    return Path(location[len("file://") :] if location.startswith("file://") else location).expanduser()


def resolve_location(dataset: Dataset, source: str) -> str:
    """Where `source` reads `dataset` from; raises GdlError saying what is valid.

    Checked before any work starts, so a typo fails in one line instead of after a server start.
    """
    if source == "remote":
        if not dataset.remote:
            raise GdlError(f"dataset {dataset.name} has no remote source; give a location of your own")
        return dataset.remote
    if source == "offline":
        if dataset.offline is None:
            raise GdlError(
                f"dataset {dataset.name} has no offline source (no installed package ships it); "
                "use remote or a location of your own"
            )
        return "offline:" + dataset.name
    if source.startswith(("http://", "https://")):
        if not urllib.parse.urlsplit(source).hostname:
            raise GdlError(f"source {redact(source)!r} has no host")
        return source
    if source.startswith("s3://"):
        parsed = urllib.parse.urlsplit(source)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise GdlError(f"bad S3 location {source!r}: expected s3://bucket/key (or s3://bucket/prefix/)")
        if source.endswith("/") and not dataset.is_folder:
            raise GdlError(f"{source}: an S3 prefix is a folder, but dataset {dataset.name} is one file")
        return source
    if "://" in source and not source.startswith("file://"):
        raise GdlError(
            f"unsupported source {redact(source)!r}: use remote, offline, http(s)://, s3:// or a local path"
        )
    path = _local_path(source)
    if path.is_dir():
        if not dataset.is_folder:
            raise GdlError(
                f"source {path} is a folder, but dataset {dataset.name} is one {dataset.kind} file"
            )
    elif not path.is_file():
        raise GdlError(f"source {path} does not exist")
    return source


def describe_source(dataset: Dataset, location: str) -> str:
    """One line saying what a location is, for reports: the original, the stand-in, or yours."""
    if location.startswith("offline:"):
        return f"offline stand-in for {dataset.name}: {dataset.offline.description}"
    if location == dataset.remote:
        return f"{dataset.name}: {dataset.description} (from {redact(location)})"
    return f"{dataset.name} replaced by {redact(location)}"


def _local_signature(path: Path) -> list:
    """What changes when a local file or folder is edited: sizes and modification times (cheap:
    nothing is read), so an edited source is fetched again instead of served from its slot."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    return [
        [p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    ]


def identity(dataset: Dataset, location: str) -> dict[str, Any]:
    """What determines the bytes of a download: the entry's kind and file name, the location
    (a local one by its absolute path, sizes and times), and for offline sources the loader,
    its code and the version of what it reads. Descriptions are left out: rewording an entry
    changes no download."""
    ident: dict[str, Any] = {"kind": dataset.kind, "file": dataset.file, "location": location}
    if location == dataset.remote:
        ident["sha256"] = dataset.sha256
    if location.startswith("offline:"):
        from models import codeversion, offline

        loader = offline.LOADERS.get(dataset.offline.loader)
        ident["offline"] = dataset.offline.model_dump(exclude={"description"})
        ident["loader_code"] = codeversion.digest(codeversion.roots_of(loader)) if loader else None
        ident["package"] = offline.source_version(dataset.offline.loader, dataset.offline.args)
    elif "://" not in location or location.startswith("file://"):
        path = _local_path(location).resolve()
        ident["location"] = str(path)
        ident["local"] = _local_signature(path) if path.exists() else None
    return ident


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


_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, origin: str | None = None):
    """An IDX array (MNIST's original format), optionally gzipped."""
    import numpy as np

    origin = origin or path.name
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise GdlError(f"IDX file {origin} is corrupt ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise GdlError(f"{origin} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise GdlError(f"IDX file {origin} has a truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise GdlError(f"IDX file {origin} holds {len(data) - header} data bytes; its header says {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_arrays(path: Path, origin: str | None = None) -> dict[str, Any]:
    """The arrays of an `.npz` (by name; pickled objects refused) or an IDX file (as "data")."""
    import numpy as np

    origin = origin or path.name
    if zipfile.is_zipfile(path):
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except ValueError as exc:  # object arrays need pickle: refused, they can run code
            raise GdlError(f"{origin}: {exc}") from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise GdlError(f"{origin} is not a readable .npz file ({exc})") from None
    return {"data": read_idx(path, origin)}


def _check_arrays(path: Path, origin: str) -> None:
    arrays = load_arrays(path, origin)
    if not arrays:
        raise GdlError(f"{origin} holds no arrays")


def _check_weights(path: Path, origin: str) -> None:
    head = path.read_bytes()[:8]
    # torch checkpoints (pickle or zip), HDF5 (.h5 / .weights.h5) and .keras (zip) files
    if not (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or head == b"\x89HDF\r\n\x1a\n"):
        raise GdlError(
            f"{origin} is not a weights file (expected a torch .pth, an HDF5 .h5 or a .keras file)"
        )


def _check_image(path: Path, origin: str) -> None:
    from models.images import check_image

    check_image(path, origin=origin)


def _check_text(path: Path, origin: str) -> None:
    decode_text(path.read_bytes(), origin)


def image_files(folder: Path) -> list[Path]:
    """The images of a folder, recursively, in a stable order (dot-names skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _check_images(folder: Path, origin: str) -> None:
    found = image_files(folder)
    if not found:
        raise GdlError(f"{origin} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in found:
        _check_image(path, f"{origin}: {path.relative_to(folder).as_posix()}")


def _check_folder(folder: Path, origin: str) -> None:
    if not dir_manifest(folder):
        raise GdlError(f"{origin} is empty")


_CHECKS: dict[str, Callable[[Path, str], None]] = {
    "text": _check_text,
    "image": _check_image,
    "images": _check_images,
    "arrays": _check_arrays,
    "archive": _check_folder,
    "weights": _check_weights,
}


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
        return cls(
            attempts=env_number("GDL_FETCH_ATTEMPTS", cls.attempts, int),
            backoff=env_number("GDL_FETCH_BACKOFF", cls.backoff, float),
            timeout=env_number("GDL_FETCH_TIMEOUT", cls.timeout, float),
            min_rate=env_number("GDL_FETCH_MIN_RATE", cls.min_rate, float),
            rate_window=env_number("GDL_FETCH_RATE_WINDOW", cls.rate_window, float),
            deadline=env_number("GDL_FETCH_DEADLINE", cls.deadline, float),
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


def one_line(text: object) -> str:
    """An exception's message on one line (some span several: urllib's redirect loop)."""
    return " ".join(str(text).split())


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
        raise GdlError(f"download of {shown} failed: HTTP {exc.code} {one_line(exc.reason)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.gaierror) and reason.errno != socket.EAI_AGAIN:
            host = urllib.parse.urlsplit(url).hostname
            raise GdlError(f"download of {shown} failed: cannot resolve host {host!r}") from None
        if isinstance(reason, OSError) and not isinstance(reason, ssl.SSLError):
            raise TransientError(f"{type(reason).__name__}: {one_line(reason)}") from None
        # A certificate that does not verify, an unknown URL type: trying again changes nothing.
        raise GdlError(f"download of {shown} failed: {one_line(reason)}") from None
    except http.client.InvalidURL:
        raise GdlError(f"download of {shown} failed: not a valid URL") from None
    except (http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise TransientError(f"{type(exc).__name__}: {one_line(exc)}") from None


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


# 4xx answers that waiting cannot change into a success, whatever their code.
_S3_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
}


def s3_error_transient(exc: BaseException) -> bool:
    """Whether an S3 failure may pass on a later try: connection trouble, 5xx, throttling; not a
    missing bucket or key, denied access or bad credentials (retrying those only wastes time)."""
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

    if isinstance(exc, NoCredentialsError | ParamValidationError):
        return False
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _S3_TRANSIENT_CODES or status >= 500 or status in (408, 429) or not status
    return True


def s3_error_text(exc: BaseException) -> str:
    """One line naming an S3 failure without credentials (botocore's messages hold no secrets,
    but may span lines)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return one_line(f"{error.get('Code', '')} {error.get('Message', '')}".strip() or exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def _s3_call(location: str, call: Callable[[], None]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        call()
    except (BotoCoreError, ClientError, OSError) as exc:
        if not s3_error_transient(exc):
            raise GdlError(f"download of {location} failed: {s3_error_text(exc)}") from None
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
    from models.archives import ArchiveLimits

    limits = ArchiveLimits.from_env()
    parsed = urllib.parse.urlparse(location)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")

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
                    raise GdlError(f"{location}: more objects or bytes than the archive limits allow")
                if obj["Size"] > limits.max_file_bytes:
                    raise GdlError(f"{location}: object {rel!r} is larger than the per-file limit")
                target = dest / safe_relpath(rel, f"object name under {location}")
                target.parent.mkdir(parents=True, exist_ok=True)
                _s3_object_to(client, bucket, obj["Key"], target, policy, ends)
        if count == 0:
            raise GdlError(f"{location} holds no objects")

    _s3_call(location, copy)


def _local_dir_to(src: Path, dest: Path) -> None:
    """Copy a local folder: regular files only (a symlink could point anywhere), bounded."""
    from models.archives import ArchiveLimits

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
        from models import offline

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
            raise GdlError(f"source {path} does not exist")


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
    from models.archives import archive_format, extract_archive

    policy = policy or FetchPolicy.from_env()
    shown = redact(location)
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = temp_dir_beside(dest_dir, f".{dataset.file}.", ".part")
    try:
        got = work / "download"
        _transfer(dataset, location, got, policy, log)
        if got.is_file():
            digest = sha256_file(got)
            if location == dataset.remote and dataset.sha256 and digest != dataset.sha256:
                raise GdlError(f"{shown}: sha256 {digest} does not match the expected {dataset.sha256}")
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
