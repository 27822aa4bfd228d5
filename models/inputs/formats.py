"""What each kind of input must look like before it lands: text, arrays, weights, images, folders."""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.core.errors import GdlError, one_line
from models.core.files import (
    dir_manifest,
)
from models.inputs.catalog import IMAGE_SUFFIXES


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
_LIMIT = "GDL_ARCHIVE_MAX_FILE_BYTES"
_TOTAL = "GDL_ARCHIVE_MAX_TOTAL_BYTES"


def _array_limits():
    """Arrays are bounded like extracted archive members: one array by GDL_ARCHIVE_MAX_FILE_BYTES,
    all of an .npz's together by the lower of that and GDL_ARCHIVE_MAX_TOTAL_BYTES (they are
    loaded at once), checked on declared sizes before any inflating."""
    from models.inputs.archives import ArchiveLimits

    return ArchiveLimits.from_env()


def _read_exactly(fh: Any, n: int) -> bytes:
    """At most `n` bytes of a (possibly decompressing) stream, read in chunks: never more."""
    parts, got = [], 0
    while got < n and (chunk := fh.read(min(1 << 20, n - got))):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: Path, origin: str | None = None):
    """An IDX array (MNIST's original format), optionally gzipped. The header's shape is checked
    against the size limit before the data is read, and no more than it declares is inflated."""
    import numpy as np

    origin = origin or path.name
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    limit = _array_limits().max_file_bytes
    try:
        with (gzip.open if gzipped else open)(path, "rb") as fh:
            head = _read_exactly(fh, 4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
                raise GdlError(f"{origin} is not an IDX file (bad magic number)")
            ndim = head[3]
            dims = _read_exactly(fh, 4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise GdlError(f"IDX file {origin} has a truncated header")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[head[2]])
            expected = math.prod(shape) * dtype.itemsize
            if expected > limit:
                raise GdlError(
                    f"IDX file {origin} declares shape {shape} ({expected} bytes), over the {limit}-byte "
                    f"limit ({_LIMIT})"
                )
            data = _read_exactly(fh, expected)
            extra = len(_read_exactly(fh, 1))
    except (OSError, EOFError, zlib.error) as exc:
        raise GdlError(f"IDX file {origin} is corrupt ({one_line(exc)})") from None
    if len(data) != expected or extra:
        got = f"more than {expected}" if extra else str(len(data))
        raise GdlError(f"IDX file {origin} holds {got} data bytes; its header says {expected}")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _npy_header(fh: Any) -> tuple[tuple[int, ...], Any]:
    """The shape and dtype an .npy stream's header declares (nothing after the header is read)."""
    from numpy.lib import format as npy

    version = npy.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(fh)
    else:
        shape, _, dtype = npy.read_array_header_2_0(fh)
    return shape, dtype


def _check_npz(path: Path, origin: str) -> None:
    """Refuse an .npz whose members or arrays, as declared, would not fit the limits: a zip
    member's uncompressed size and an .npy header's shape are both checked before inflating. Its
    arrays are loaded at once: together they are held to the one-file limit too."""
    limits = _array_limits()
    total = 0
    cap, setting = min(
        (limits.max_total_bytes, _TOTAL), (limits.max_file_bytes, f"{_LIMIT}, for all of an .npz's arrays")
    )
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.file_size > limits.max_file_bytes:
                raise GdlError(
                    f"{origin}: member {name} inflates to {info.file_size} bytes, over the "
                    f"{limits.max_file_bytes}-byte limit ({_LIMIT})"
                )
            total += info.file_size
            if total > cap:
                raise GdlError(
                    f"{origin}: member {name} takes the arrays past the {cap}-byte limit ({setting})"
                )
            if not name.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                shape, dtype = _npy_header(fh)
                header = fh.tell()
            if dtype.hasobject:
                raise GdlError(
                    f"{origin}: array {name[:-4]} holds Python objects, refused (they need pickle)"
                )
            declared = math.prod(shape) * dtype.itemsize
            if declared > limits.max_file_bytes:
                raise GdlError(
                    f"{origin}: array {name[:-4]} declares shape {shape} ({declared} bytes), over the "
                    f"{limits.max_file_bytes}-byte limit ({_LIMIT})"
                )
            if header + declared > info.file_size:
                raise GdlError(
                    f"{origin}: array {name[:-4]} declares shape {shape} ({declared} bytes) but its member "
                    f"holds {info.file_size - header}"
                )


def load_arrays(path: Path, origin: str | None = None) -> dict[str, Any]:
    """The arrays of an `.npz` (by name; pickled objects refused) or an IDX file (as "data"),
    with declared sizes checked against the limits before anything is inflated."""
    import numpy as np

    origin = origin or path.name
    if zipfile.is_zipfile(path):
        try:
            _check_npz(path, origin)
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except ValueError as exc:  # object arrays need pickle: refused, they can run code
            raise GdlError(f"{origin}: {one_line(exc)}") from None
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise GdlError(f"{origin} is not a readable .npz file ({one_line(exc)})") from None
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
    from models.core.images import check_image

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
