"""What each kind of input must look like before it lands: text, arrays, weights, images, folders."""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.core.errors import GdlError
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
