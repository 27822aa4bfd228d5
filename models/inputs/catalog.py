"""The dataset catalog (`catalog.yaml`): every input a technique can read, where each source
resolves, and the identity of what a location holds (what a download's cache key is made of)."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from models.core.errors import GdlError, one_line
from models.core.files import safe_name
from models.core.settings import settings

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


def catalog_path() -> Path:
    """The catalog in use: GDL_CATALOG (a site's own), else the packaged catalog.yaml."""
    return settings().catalog or CATALOG


@cache
def _catalog(path: Path, mtime_ns: int) -> dict[str, Dataset]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GdlError(one_line(f"catalog {path}: {exc}")) from None
    if not isinstance(data, dict):
        raise GdlError(f"{path} must map dataset names to entries")
    found = {}
    for name, entry in data.items():
        try:
            if not str(name).isidentifier() or name == "dvc":  # data/raw/dvc holds DVC's slots
                raise GdlError(f"{path}: dataset name {name!r} must be an identifier other than 'dvc'")
            found[name] = Dataset(name=name, **(entry or {}))
            safe_name(found[name].file, f"file name of dataset {name}")
        except ValidationError as exc:
            first = exc.errors()[0]
            raise GdlError(
                f"{path}: entry {name!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
    return found


def catalog() -> dict[str, Dataset]:
    """Every catalog entry (re-read when the catalog file changes)."""
    path = catalog_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise GdlError(f"GDL_CATALOG={str(path)!r}: {exc.strerror}") from None
    return _catalog(path, mtime)


def get_dataset(name: str) -> Dataset:
    entries = catalog()
    if name not in entries:
        raise GdlError(f"unknown dataset {name!r}; available: {', '.join(sorted(entries))}")
    return entries[name]


# A URL's start wherever it stands in a text: a scheme and at least one slash (`http:/` is a typo
# of `http://` that still carries what follows).
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*:/")
_USERINFO = re.compile(r"[^/:@\s]+:[^@]*@")  # `user:secret@host/...` given without a scheme
_TEXT_URL = re.compile(_SCHEME.pattern + r"[^\s'\"<>`]*")
_CLOSERS = ")]}>.,;:"


def _redact_url(url: str) -> str:
    """`url` (its scheme and slashes, if any, first) without its query, fragment and everything up
    to the last `@` before them: a password may hold `/`, so no parser's idea of the authority is
    trusted."""
    head = _SCHEME.match(url)
    start = head.end() if head else 0
    start += len(url[start:]) - len(url[start:].lstrip("/"))
    body = re.split(r"[?#]", url[start:], maxsplit=1)[0]
    return url[:start] + body.rsplit("@", 1)[-1]


def redact(location: str) -> str:
    """A location fit for logs and reports, whatever its shape (unparseable, a one-slash typo, a
    scheme anywhere in it): no `user:password@`, no query (presigned signatures), no fragment.
    Everything from the first scheme on is taken as the URL, so a password with spaces is cut too."""
    found = _SCHEME.search(location)
    if found:
        return location[: found.start()] + _redact_url(location[found.start() :])
    if _USERINFO.match(location):
        return _redact_url(location)
    return location


def redact_text(text: object) -> str:
    """`text` (an exception's message: botocore's, urllib's) with every URL in it redacted,
    keeping the punctuation that closes it (`(see http://h/x?sig=1)` -> `(see http://h/x)`)."""

    def one(match: re.Match) -> str:
        url = match.group(0)
        shown = _redact_url(url)
        tail = len(url) - len(url.rstrip(_CLOSERS))
        return shown + url[len(url) - tail :] if tail and not shown.endswith(url[-tail:]) else shown

    return _TEXT_URL.sub(one, str(text))


def named_source(dataset: str, source: str) -> str:
    """How a message names an input: the user's own location (redacted) when the source is
    theirs, else the catalog entry in brackets: `(chelsea)`."""
    return f"({dataset})" if source in ("remote", "offline") else redact(source)


def mirror_location(dataset: Dataset) -> str | None:
    """Where GDL_MIRROR holds `dataset`'s remote file: the mirror base plus the remote's file
    name (`.../nietzsche.txt`); None without a mirror or a remote."""
    base = settings().mirror
    if not base or not dataset.remote:
        return None
    name = urllib.parse.unquote(urllib.parse.urlsplit(dataset.remote).path.rsplit("/", 1)[-1])
    return base.rstrip("/") + "/" + urllib.parse.quote(safe_name(name, f"remote file name of {dataset.name}"))


def render_mirror_files() -> str:
    """Markdown table of what a GDL_MIRROR must hold: one file per remote catalog entry."""
    lines = ["| file | catalog entry | checked against |", "| --- | --- | --- |"]
    for name, d in catalog().items():
        if d.remote:
            file = urllib.parse.unquote(urllib.parse.urlsplit(d.remote).path.rsplit("/", 1)[-1])
            check = "the catalog's sha256" if d.sha256 else "its pin (the first download's sha256)"
            lines.append(f"| `{file}` | `{name}` | {check} |")
    return "\n".join(lines) + "\n"


def expected_sha256(dataset: Dataset, location: str) -> str | None:
    """The catalog's digest, for the remote itself and for its mirror copy."""
    if location in (dataset.remote, mirror_location(dataset)):
        return dataset.sha256
    return None


def _local_path(location: str) -> Path:
    return Path(location[len("file://") :] if location.startswith("file://") else location).expanduser()


ENV_PREFIX = "env:"


def _from_env(source: str) -> str:
    """The location an `env:NAME` source names: the value of environment variable NAME, read at
    the time of use, so the URL (its password, its presigned query) never becomes a parameter."""
    name = source[len(ENV_PREFIX) :]
    if not name.isidentifier():
        raise GdlError(f"source {source!r}: expected env:NAME with NAME an environment variable's name")
    value = os.environ.get(name, "").strip()
    if not value:
        raise GdlError(f"source {source}: environment variable {name} is not set")
    if value.startswith(ENV_PREFIX):
        raise GdlError(f"source {source}: {name} names another env: source; give the location itself")
    return value


def _refuse_secrets(source: str, shown: str, parsed: urllib.parse.SplitResult, from_env: bool) -> None:
    """A password or a presigned query is kept out of the params (they reach Prefect's database
    and UI as the flow run's parameters): it is given through env:NAME; S3 credentials never ride
    in the URL. `shown`: the source redacted."""
    userinfo = "@" in source.split("?", 1)[0].split("#", 1)[0]
    if not (userinfo or parsed.query or parsed.fragment):
        return
    if source.startswith("s3://"):
        raise GdlError(
            f"source {shown!r}: an s3:// location takes no credentials or query; set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (a presigned URL is an "
            "https:// URL: pass it as env:NAME)"
        )
    if not from_env:
        raise GdlError(
            f"source {shown!r} carries credentials or a query, which would be stored with the run's "
            "parameters: put the URL in an environment variable and give env:NAME instead"
        )


def resolve_location(dataset: Dataset, source: str) -> str:
    """Where `source` reads `dataset` from; raises GdlError saying what is valid.

    Checked before any work starts, so a typo fails in one line instead of after a server start.
    An `env:NAME` source resolves to the value of NAME (read again at download time).
    """
    if source.startswith(ENV_PREFIX):
        return _resolve(dataset, _from_env(source), from_env=True)
    return _resolve(dataset, source, from_env=False)


def _resolve(dataset: Dataset, source: str, from_env: bool) -> str:
    if source == "remote":
        if not dataset.remote:
            raise GdlError(f"dataset {dataset.name} has no remote source; give a location of your own")
        return mirror_location(dataset) or dataset.remote
    if source == "offline":
        if dataset.offline is None:
            raise GdlError(
                f"dataset {dataset.name} has no offline source (no installed package ships it); "
                "use remote or a location of your own"
            )
        return "offline:" + dataset.name
    shown = redact(source)
    if source.startswith(("http://", "https://", "s3://")):
        try:
            parsed = urllib.parse.urlsplit(source)
            parsed.port  # noqa: B018 (raises ValueError for :99999 or :abc)
        except ValueError as exc:
            raise GdlError(f"source {shown!r} is not a valid URL ({redact_text(exc)})") from None
        _refuse_secrets(source, shown, parsed, from_env)
        if source.startswith("s3://"):
            if not parsed.netloc or not parsed.path.strip("/"):
                raise GdlError(
                    f"bad S3 location {shown!r}: expected s3://bucket/key (or s3://bucket/prefix/)"
                )
            if source.endswith("/") and not dataset.is_folder:
                raise GdlError(f"{shown}: an S3 prefix is a folder, but dataset {dataset.name} is one file")
        elif not parsed.hostname:
            raise GdlError(f"source {shown!r} has no host")
        return source
    if "://" in source and not source.startswith("file://"):
        raise GdlError(
            f"unsupported source {shown!r}: use remote, offline, http(s)://, s3://, env:NAME or a local path"
        )
    typo = _SCHEME.match(source)
    if typo and source[: typo.end() - 2].lower() in ("http", "https", "s3", "file"):
        raise GdlError(f"source {shown!r} looks like a URL with one slash: write {shown[: typo.end()]}/...")
    path = _local_path(source)
    if path.is_dir():
        if not dataset.is_folder:
            raise GdlError(
                f"source {shown} is a folder, but dataset {dataset.name} is one {dataset.kind} file"
            )
    elif not path.is_file():
        raise GdlError(f"source {shown} does not exist")
    return source


def describe_source(dataset: Dataset, location: str) -> str:
    """One line saying what a location is, for reports: the original, the stand-in, or yours."""
    if location.startswith("offline:"):
        return f"offline stand-in for {dataset.name}: {dataset.offline.description}"
    if location == dataset.remote:
        return f"{dataset.name}: {dataset.description} (from {redact(location)})"
    if location == mirror_location(dataset):
        return f"{dataset.name}: {dataset.description} (from the mirror, {redact(location)})"
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
    # A URL by its redacted form: credentials and a presigned query do not change the bytes (a
    # renewed signature still hits the cache), and the identity must not hold them.
    ident: dict[str, Any] = {"kind": dataset.kind, "file": dataset.file, "location": redact(location)}
    if location in (dataset.remote, mirror_location(dataset)):
        ident["sha256"] = dataset.sha256
    if location.startswith("offline:"):
        from models.core import codeversion
        from models.inputs import offline

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
