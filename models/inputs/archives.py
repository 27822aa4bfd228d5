"""Safe extraction of downloaded archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz): all or nothing.

Archives come from outside (URLs, buckets, users' paths), so every member name and header is
hostile until checked: no absolute path, `..`, backslash or control character; only regular files
and folders (no links, devices, FIFOs); no path twice; member count, per-file and total sizes
bounded, on the headers up front and again on the bytes actually written. Extraction goes to a
temporary sibling folder renamed into place at the end, so a rejected or broken archive leaves
nothing behind. OS metadata (`__MACOSX/`, dot-names) is skipped: manifests never count dot-names.

Hand-written rather than `shutil.unpack_archive` or tarfile's extraction filters (`filter="data"`):
those refuse unsafe paths and some links, but bound neither the member count nor the per-file and
total sizes (a zip bomb or a tar of a million files passes), zipfile has no filter at all, and a
refused member leaves the members before it on disk.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, NoReturn

from models.core.errors import GdlError
from models.core.files import temp_dir_beside
from models.core.settings import settings

CHUNK = 1 << 20
# tarfile reads pax and GNU long-name headers whole, so a hostile header size would fill memory;
# real headers are a few KiB and file data is read in CHUNKs, so no honest read comes near this.
_MAX_TAR_READ = 16 << 20
_TAR_COMPRESSIONS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a broken archive raises from zipfile, tarfile or a decompressor (gzip's BadGzipFile and
# bz2's "Invalid data stream" are OSErrors without an errno; disk errors carry one).
_CORRUPT = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    ValueError,
    NotImplementedError,  # a zip compression method Python cannot read (deflate64, ...)
    OSError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_file_bytes: int = 4 << 30
    max_total_bytes: int = 32 << 30

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        """The limits GDL_ARCHIVE_MAX_MEMBERS / _FILE_BYTES / _TOTAL_BYTES set (models.core.settings)."""
        current = settings()
        return cls(
            max_members=current.archive_max_members,
            max_file_bytes=current.archive_max_file_bytes,
            max_total_bytes=current.archive_max_total_bytes,
        )


def archive_format(path: Path) -> str | None:
    """ "zip" or "tar" (plain, gzip, bzip2 or xz), judged by content, not by name; None otherwise."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        # A leading zip signature is exact; is_zipfile alone also matches a tar that merely ends
        # with a zip member, so tar goes first and is_zipfile is the fallback (self-extractors).
        if head in (b"PK\x03\x04", b"PK\x05\x06"):
            return "zip"
        # The first header block, checked by its checksum. Not tarfile.is_tarfile(): it would read
        # a pax or long-name header of whatever size it claims into memory.
        with _tar_opener(path)(path, "rb") as raw:
            block = raw.read(tarfile.BLOCKSIZE)
        with contextlib.suppress(tarfile.EOFHeaderError):  # all zeros: an empty tar
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        return "tar"
    except _CORRUPT:
        pass
    try:
        return "zip" if zipfile.is_zipfile(path) else None
    except _CORRUPT:
        return None


def _tar_opener(path: Path) -> Callable[..., IO[bytes]]:
    """How to read the tar inside `path`: gzip, bzip2 or xz by magic bytes, else plain."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((opener for magic, opener in _TAR_COMPRESSIONS if head.startswith(magic)), open)


def _shown(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "...")


class _Gate:
    """Admits members one at a time: name, kind, duplicates and header sizes against the limits."""

    def __init__(self, root: Path, limits: ArchiveLimits, origin: str) -> None:
        self.root, self.real_root, self.limits, self.origin = root, root.resolve(), limits, origin
        self.entries = self.declared = self.written = self.files = self.skipped = 0
        self.current = ""  # the member being handled, for errors raised by the readers
        self.seen: set[tuple[str, ...]] = set()  # admitted members, files and folders
        self.folders: set[tuple[str, ...]] = {()}  # every folder, listed or implied by a path

    def fail(self, name: str, rule: str) -> NoReturn:
        raise GdlError(f"archive {self.origin}: member {_shown(name)} {rule}")

    def too_large(self, name: str) -> NoReturn:
        limit = self.limits.max_file_bytes
        self.fail(name, f"is larger than the {limit}-byte limit (GDL_ARCHIVE_MAX_FILE_BYTES)")

    def over_total(self, name: str) -> NoReturn:
        limit = self.limits.max_total_bytes
        self.fail(name, f"takes the total past the {limit}-byte limit (GDL_ARCHIVE_MAX_TOTAL_BYTES)")

    def parts(self, name: str) -> tuple[str, ...]:
        """The path components of a member name, or an error saying which rule it breaks."""
        if not name:
            self.fail(name, "has an empty name")
        if name.startswith(("/", "\\\\")) or _DRIVE.match(name):
            self.fail(name, "has an absolute path")
        if "\\" in name:  # a separator on Windows: 'a\\..\\b' must not mean anything
            self.fail(name, "contains a backslash")
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
            self.fail(name, "contains a control character")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes smuggled in as surrogates
            self.fail(name, "is not valid UTF-8")
        parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
        if ".." in parts:
            self.fail(name, "escapes the target folder")
        return parts

    def admit(self, name: str, kind: str, size: int) -> tuple[str, ...] | None:
        """The checked path of a member to extract, None for one to skip; raises for a bad one."""
        limits, self.current = self.limits, name
        self.entries += 1  # skipped entries count too: they cost work all the same
        if self.entries > limits.max_members:
            self.fail(name, f"goes past the limit of {limits.max_members} members (GDL_ARCHIVE_MAX_MEMBERS)")
        parts = self.parts(name)
        if not parts:
            return None  # "./", the archive's own root
        if any(p == "__MACOSX" or p.startswith(".") for p in parts):
            self.skipped += 1
            return None
        if kind not in ("file", "folder"):
            self.fail(name, f"is a {kind}; only files and folders are allowed")
        if parts in self.seen:
            self.fail(name, "appears twice")
        for i in range(1, len(parts)):
            if parts[:i] in self.seen and parts[:i] not in self.folders:
                self.fail(name, f"is inside {'/'.join(parts[:i])!r}, which is a file")
        if kind == "file":
            if parts in self.folders:
                self.fail(name, "is a file but other members use it as a folder")
            if size > limits.max_file_bytes:  # the header already says so: do not start
                self.too_large(name)
            self.declared += size
            if self.declared > limits.max_total_bytes:
                self.over_total(name)
        self.seen.add(parts)
        self.folders.update(parts[:i] for i in range(1, len(parts) + (kind == "folder")))
        return parts

    def write(self, parts: tuple[str, ...], name: str, src: IO[bytes], declared: int) -> None:
        """Stream one file out, counting the bytes actually written: headers can lie."""
        target = self.root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.resolve().is_relative_to(self.real_root):  # a backstop: parts() already ensures it
            self.fail(name, "escapes the target folder")
        # O_EXCL and O_NOFOLLOW: never overwrite or write through anything already there.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o644)  # whatever the archive or the umask says: no setuid, not read-only
            size = 0
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > declared:
                    self.fail(name, f"holds more than the {declared} bytes its header declares")
                # Implied by the check above and admit(); kept so the limits hold on their own.
                if size > self.limits.max_file_bytes:
                    self.too_large(name)
                if self.written + size > self.limits.max_total_bytes:
                    self.over_total(name)
                out.write(chunk)
        self.written += size
        self.files += 1

    def finish(self) -> None:
        for parts in self.folders:
            folder = self.root.joinpath(*parts)
            folder.mkdir(parents=True, exist_ok=True)  # listed but empty folders
            os.chmod(folder, 0o755)  # whatever the archive or the umask says: not read-only


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16  # unix mode bits, when the writer recorded them
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if info.filename.endswith("/") or stat.S_ISDIR(mode):  # not is_dir(): it fails on an empty name
        return "folder"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # many writers record permission bits only
        return "special file"
    return "file"


def _extract_zip(archive: Path, gate: _Gate) -> None:
    with zipfile.ZipFile(archive) as zf:
        # The central directory lists everything: check it all before writing a byte.
        files = []
        for info in zf.infolist():
            name, kind = info.orig_filename, _zip_kind(info)  # .filename is cut at a NUL, hiding it
            parts = gate.admit(name, kind, info.file_size)
            if parts is not None and kind == "file":
                if info.flag_bits & 0x1:
                    gate.fail(name, "is encrypted")
                files.append((info, name, parts))
        for info, name, parts in files:
            gate.current = name
            # zipfile stops at the declared size and checks the CRC, so a lying header fails too.
            with zf.open(info) as src:
                gate.write(parts, name, src, info.file_size)


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "folder"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if info.isfifo():  # before isdev(), which counts FIFOs as devices
        return "FIFO"
    if info.isdev():
        return "device file"
    return "special file"


class _TarStream:
    """The decompressed tar bytes as tarfile reads them, with hostile header sizes refused."""

    def __init__(self, raw: IO[bytes], origin: str) -> None:
        self.raw, self.origin, self.last = raw, origin, b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_TAR_READ:
            raise GdlError(f"archive {self.origin}: a tar header claims an implausible size ({size} bytes)")
        self.last = self.raw.read(size)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _extract_tar(archive: Path, gate: _Gate) -> None:
    with _tar_opener(archive)(archive, "rb") as raw:
        stream = _TarStream(raw, gate.origin)
        # Member by member as the stream goes by (never extractall): each is checked, then written.
        with tarfile.open(fileobj=stream, mode="r:") as tf:
            for info in tf:
                parts = gate.admit(info.name, _tar_kind(info), info.size)
                if parts is not None and info.isreg():
                    with tf.extractfile(info) as src:
                        gate.write(parts, info.name, src, info.size)
        # tarfile ends quietly at a missing or half header; a whole archive ends with a zero block.
        if stream.last != bytes(tarfile.BLOCKSIZE):
            raise GdlError(f"archive {gate.origin} is corrupt or truncated: it has no end-of-archive marker")


def extract_archive(
    archive: Path, dest: Path, limits: ArchiveLimits | None = None, origin: str | None = None
) -> dict:
    """Extract `archive` into `dest` (missing or empty), all or nothing; hostile members raise GdlError.

    Returns {"format", "members" (files written), "bytes", "skipped" (metadata entries)}.
    """
    limits = limits or ArchiveLimits.from_env()
    origin = origin or archive.name
    if not archive.is_file():
        raise GdlError(f"archive {origin} is not a file")
    kind = archive_format(archive)
    if kind is None:
        raise GdlError(f"{origin} is not a zip or tar archive")
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise GdlError(f"cannot extract {origin}: {dest} exists and is not an empty folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = temp_dir_beside(dest.parent, f".{dest.name}.", ".extract")
    except OSError as exc:
        raise GdlError(f"cannot extract {origin} into {dest}: {exc}") from None
    try:
        gate = _Gate(work, limits, origin)
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, gate)
            gate.finish()
            os.replace(work, dest)  # onto a missing or empty `dest` alike
        except GdlError:
            raise
        except _CORRUPT as exc:
            why = f"{type(exc).__name__}: {exc}".replace("\n", " ")  # the message is one line
            if isinstance(exc, OSError) and exc.errno is not None:  # the disk, not the archive
                raise GdlError(f"archive {origin}: extracting into {dest} failed ({why})") from None
            where = f" at member {_shown(gate.current)}" if gate.current else ""
            raise GdlError(f"archive {origin} is corrupt or truncated{where} ({why})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
        raise
    return {"format": kind, "members": gate.files, "bytes": gate.written, "skipped": gate.skipped}
