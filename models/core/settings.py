"""Every setting gdl reads from the environment (the `GDL_*` variables), in one place.

Each is a typed field with its default and a one-line description; nothing else in the project
reads `GDL_*` variables from `os.environ` (tests/test_settings.py checks). `settings()` always
reflects the current environment: it is cached per snapshot of the variables it reads, so a
changed variable (a test's monkeypatch, a worker's environment) is seen on the next call. A bad
value is a one-line `GdlError` naming the variable and what was expected. An empty variable
counts as unset. `gdl settings` prints the current values; `gdl settings --reference [--write]`
renders the README's table of them.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.core.errors import GdlError, one_line

PREFIX = "GDL_"
# Read as a fallback of GDL_S3_ENDPOINT_URL (boto3's own name for it).
AWS_ENDPOINT = "AWS_ENDPOINT_URL_S3"


class Settings(BaseSettings):
    """The `GDL_*` environment variables (field `fetch_timeout` is `GDL_FETCH_TIMEOUT`)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True, validate_default=False
    )

    # Where the project is
    root: Path | None = Field(
        None, description="the project checkout to work in (unset: the current directory)"
    )
    extra_techniques: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="importable modules with techniques of your own, comma-separated"
    )
    catalog: Path | None = Field(
        None,
        description="a dataset catalog of your own (YAML, the layout of models/inputs/catalog.yaml) "
        "in place of the packaged one",
    )
    mirror: str | None = Field(
        None,
        description="read every catalog `remote` source from this mirror instead, by the same file "
        "names: an `https://` base or an `s3://bucket/prefix` (README: Mirrors)",
    )
    # Publishing
    s3_bucket: str | None = Field(
        None, description="publish runs to this S3 bucket (unset: to the local folder GDL_PUBLISH_DIR)"
    )
    s3_prefix: str = Field(
        "gdl", description="key prefix of published runs in the bucket (`/`: the bucket's top level)"
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices(f"{PREFIX}S3_ENDPOINT_URL", AWS_ENDPOINT),
        description=f"S3-compatible endpoint for publishing, sources, shared storage and DVC "
        f"(also read: {AWS_ENDPOINT}; unset: AWS)",
    )
    publish_dir: Path | None = Field(
        None, description="local publish folder when no bucket is set (unset: data/published)"
    )
    publish_attempts: int = Field(
        4, ge=1, description="tries of an upload that failed in a way a retry can fix (not a missing bucket)"
    )
    publish_backoff: float = Field(1.0, ge=0, description="seconds before an upload's first retry, doubling")
    publish_timeout: float = Field(30.0, gt=0, description="seconds per S3 request when publishing")
    # Downloads
    fetch_attempts: int = Field(4, ge=1, description="tries of a download (transient failures only)")
    fetch_backoff: float = Field(1.0, ge=0, description="seconds before a download's first retry, doubling")
    fetch_timeout: float = Field(60.0, gt=0, description="seconds per connect or read of a download")
    fetch_min_rate: float = Field(
        1024.0, ge=0, description="bytes/s below which a download is cut off and retried (0: no minimum)"
    )
    fetch_rate_window: float = Field(
        60.0, gt=0, description="seconds over which GDL_FETCH_MIN_RATE is averaged"
    )
    fetch_deadline: float = Field(
        4 * 3600.0, ge=0, description="seconds one download may take in all, retries included (0: none)"
    )
    archive_max_members: int = Field(
        200_000, ge=1, description="files an extracted archive or copied folder may hold"
    )
    archive_max_file_bytes: int = Field(
        4 << 30, ge=1, description="bytes one extracted or copied file may have (4 GiB)"
    )
    archive_max_total_bytes: int = Field(
        32 << 30, ge=1, description="bytes an extracted archive or copied folder may hold in all (32 GiB)"
    )
    # Orchestration
    task_retries: int = Field(
        1, ge=0, description="Prefect task-level retries of download and publish (transient failures)"
    )
    heartbeat_seconds: int = Field(
        30, ge=30, description="seconds between flow-run heartbeats; Prefect's minimum is 30"
    )
    shared_storage: str | None = Field(
        None, description="`s3://bucket/prefix` for results, cache and step outputs shared by workers"
    )
    dvc_remote: str | None = Field(None, description="default `s3://bucket/prefix` of `gdl dvc-remote`")
    native_logs: bool = Field(
        False, description="keep TensorFlow's native CUDA-probe lines in the console (1/true/yes/on)"
    )

    @field_validator("extra_techniques", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urllib.parse.urlsplit(value)
            if parsed.scheme not in ("http", "https", "s3") or not parsed.netloc:
                raise ValueError("expected an https:// base or an s3://bucket/prefix")
            if parsed.query or parsed.fragment:
                raise ValueError("a mirror is a base location, without ?query or #fragment")
        return value

    @field_validator("publish_dir")
    @classmethod
    def _a_folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("s3_bucket") is None:  # with a bucket it is unused
            problem = folder_problem(value)
            if problem:
                raise ValueError(f"expected a folder, but {problem}")
        return value

    @field_validator("shared_storage")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urllib.parse.urlparse(value)
            if parsed.scheme != "s3" or not parsed.netloc:
                raise ValueError("expected s3://bucket/prefix")
        return value


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder, or None: it is a file, or a file stands where
    one of its parents would be."""
    for where in (path, *path.parents):
        if where.is_dir():
            return None
        if where.exists() or where.is_symlink():
            what = "a file" if where.is_file() else "not a folder"
            return f"it is {what}" if where == path else f"{where} on its way is {what}"
    return None


def env_name(field: str) -> str:
    """The environment variable of a field: `fetch_timeout` -> `GDL_FETCH_TIMEOUT`."""
    return PREFIX + field.upper()


def _snapshot() -> tuple[tuple[str, str], ...]:
    # pydantic-settings matches names case-insensitively: so does the snapshot.
    return tuple(
        sorted(
            (k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX) or k.upper() == AWS_ENDPOINT
        )
    )


def settings() -> Settings:
    """The settings of the current environment (validated once per distinct environment)."""
    return _load(_snapshot())


@lru_cache(maxsize=16)
def _load(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise GdlError(_one_line_error(exc)) from None


_KINDS = {int: "an integer", float: "a number", bool: "a boolean (1/0, true/false, yes/no, on/off)"}


def _one_line_error(exc: ValidationError) -> str:
    """`GDL_FETCH_TIMEOUT='abc': expected a number` for the first bad variable."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    info = Settings.model_fields.get(field)
    name = env_name(field) if info is not None else field
    kind = _KINDS.get(info.annotation, "a value") if info is not None else "a value"  # type: ignore[arg-type]
    ctx = error.get("ctx") or {}
    if error["type"] == "greater_than_equal":
        expected = f"{kind} of at least {ctx['ge']}"
    elif error["type"] == "greater_than":
        expected = f"{kind} greater than {ctx['gt']}"
    elif error["type"] == "value_error":
        expected = str(ctx.get("error", error["msg"])).removeprefix("expected ")
    else:
        expected = kind
    return one_line(f"{name}={error.get('input')!r}: expected {expected}")


# ---------------------------------------------------------------------------------------------
# Showing them


def _fields() -> Iterator[tuple[str, FieldInfo]]:
    yield from Settings.model_fields.items()


def _type_name(info: FieldInfo) -> str:
    annotation = info.annotation
    names = {int: "integer", float: "number", bool: "boolean", Path: "path", Path | None: "path"}
    if annotation in names:
        return names[annotation]
    if annotation == tuple[str, ...]:
        return "list"
    return "text"


def _shown_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return "none" if not value else ",".join(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _without_credentials(text: str) -> str:
    """A URL-valued setting without any `user:password@` (none of these settings is a secret,
    but an endpoint or bucket URL may carry credentials)."""
    if "://" not in text:
        return text
    parsed = urllib.parse.urlsplit(text)
    if parsed.username is None and parsed.password is None:
        return text
    return urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


def _markdown_default(value: Any) -> str:
    shown = _shown_default(value)
    return shown if value is None or value == () else f"`{shown}`"


def render_reference() -> str:
    """The Markdown table of every setting (what README.md holds between its markers)."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for field, info in _fields():
        default = _markdown_default(info.default)
        lines.append(f"| `{env_name(field)}` | {_type_name(info)} | {default} | {info.description} |")
    return "\n".join(lines) + "\n"


def render_current() -> str:
    """`NAME=value` per setting, as the current environment sets it, `(default)` where unset."""
    current = settings()
    lines = []
    for field in Settings.model_fields:
        value = getattr(current, field)
        shown = _without_credentials(_shown_default(value))
        lines.append(
            f"{env_name(field)}={shown}" + ("" if field in current.model_fields_set else "  (default)")
        )
    return "\n".join(lines) + "\n"
