"""File plumbing shared by every step: digests, atomic writes, directory manifests, locks, retries."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from models.core.errors import GdlError

T = TypeVar("T")

CHUNK = 1 << 20
# Names we accept for files and keys that come from outside (run ids, sample names, S3 keys).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_json(obj: Any) -> str:
    """Stable digest of a JSON-able object (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def safe_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a plain file name (no separators, no '..'), else raise."""
    if not is_safe_name(name):
        raise GdlError(f"unsafe {what} {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def safe_relpath(rel: str, what: str = "path") -> str:
    """Validate a '/'-separated relative path whose every part is a safe name."""
    parts = rel.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise GdlError(f"unsafe {what} {rel!r}")
    for part in parts:
        safe_name(part, what)
    return rel


# Why a write failed, for the errors a user fixes on the machine, not in gdl.
NO_ROOM = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


@contextlib.contextmanager
def writing(path: Path, tmp: Path | str | None = None) -> Iterator[None]:
    """Around a write of `path` (through `tmp`, removed on any error): a full disk, a quota, a
    read-only or forbidden folder becomes one line naming the path and the reason."""
    try:
        yield
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        reason = NO_ROOM.get(exc.errno) if isinstance(exc, OSError) else None
        if reason is None:
            raise
        raise GdlError(f"cannot write {path}: {reason}") from None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename: readers see old or new, never half."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with writing(path, tmp):
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide published files from a web server
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """An uncompressed `.npz` whose bytes depend only on the arrays (np.savez stamps the time)."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, np.asarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def dir_manifest(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every file under `root` (relative, '/'-separated) with its size and sha256."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        # Dot-names (markers, locks, staging dirs of a killed writer) are never content.
        if rel in exclude or any(part.startswith(".") for part in rel.split("/")):
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place, replacing whatever was at `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(parent: Path, prefix: str, suffix: str) -> Path:
    """A fresh temp dir in `parent` with the permissions of any new folder (mkdtemp makes it
    0700, which would stay on the folder it is renamed into and on every copy of it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    path.chmod(0o777 & ~_umask())
    return path


@contextlib.contextmanager
def staging_dir(final: Path, sweep: bool = False) -> Iterator[Path]:
    """A fresh sibling temp dir for building `final`; removed if the block fails. With `sweep`
    (for callers holding `final`'s lock, so nobody else is building it), staging dirs that a
    killed writer left beside `final` are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        for stale in final.parent.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_dir_beside(final.parent, f".{final.name}.", ".tmp")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _acquire(path: Path) -> FileLock:
    """Take the lock at `path`. filelock re-takes it when the file it locked was removed by its
    holder meanwhile (the lock-then-check-inode protocol); a folder pruned in between (by a
    failed step's cleanup) is made again and the lock tried afresh."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire()
        except FileNotFoundError:
            continue
        return lock


@contextlib.contextmanager
def file_lock(path: Path, remove_if: Callable[[], bool] | None = None) -> Iterator[None]:
    """Exclusive lock on `path` (created if needed; filelock's FileLock, an flock on Unix);
    blocks until held. With `remove_if`, the lock file is removed on release when that says so
    (e.g. when the slot it guards does not exist: a failed step leaves no lock file behind)."""
    lock = _acquire(path)
    try:
        yield
    finally:
        try:
            if remove_if is not None and remove_if():
                path.unlink(missing_ok=True)
        finally:
            lock.release()


def prune_empty_dirs(start: Path, stop: Path) -> None:
    """Remove `start` and its parents while they are empty, up to `stop` (kept)."""
    here = start
    while here != stop and stop in here.parents:
        try:
            here.rmdir()
        except OSError:  # not empty (or gone): stop here
            return
        here = here.parent


def retry(
    fn: Callable[[], T],
    *,
    attempts: int,
    backoff: float,
    retry_on: tuple[type[BaseException], ...],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    retry_if: Callable[[BaseException], bool] = lambda exc: True,
) -> T:
    """Call `fn` up to `attempts` times, sleeping backoff, 2*backoff, ... between failures of the
    `retry_on` types that `retry_if` deems worth another try (others are raised at once)."""
    if attempts < 1:
        raise GdlError(f"retry attempts must be at least 1 (got {attempts})")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts or not retry_if(exc):
                raise
            delay = backoff * 2 ** (attempt - 1)
            if on_retry:
                on_retry(attempt, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def numbered_name(prefix: str, number: int, digits: int = 6, suffix: str = ".png") -> str:
    """`prefix-000042.png`: the name of the file numbered `number` in a series (training frames,
    per-epoch files); zero-padded, so names sort as their numbers do."""
    return f"{prefix}-{number:0{digits}d}{suffix}"


def numbered_files(folder: Path, prefix: str, suffix: str = ".png") -> list[tuple[int, Path]]:
    """The series `numbered_name(prefix, ..., suffix=suffix)` wrote in `folder`, as (number, path)
    in order of number; none if the folder does not exist."""
    found = []
    for path in folder.glob(f"{prefix}-*{suffix}"):
        digits = path.name[len(prefix) + 1 : len(path.name) - len(suffix)]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)
