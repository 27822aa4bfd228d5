"""Bombs in array inputs: declared shapes and decompressed sizes are checked before inflating, the
refusal is one line naming the input, and nothing (not even the hidden staging folder) is left."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from models.core.errors import GdlError
from models.inputs import fetch as datasets
from models.inputs.catalog import get_dataset, resolve_location
from models.inputs.fetch import FetchPolicy

ROOT = Path(__file__).resolve().parents[1]
FAST = FetchPolicy(attempts=1, backoff=0.0, timeout=1.0)
MIB = 1 << 20


def _mnist():
    return get_dataset("mnist").model_copy(update={"sha256": None})


def _fetch(source: Path, dest: Path, raw_root: Path) -> None:
    dataset = _mnist()
    datasets.fetch(dataset, resolve_location(dataset, str(source)), dest, raw_root, FAST, log=lambda m: None)


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """An .npy version 1.0 header declaring `shape`, written by hand (no data follows)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _idx_header(*shape: int) -> bytes:
    return b"\x00\x00\x08" + bytes([len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def _gzip_zeros_tail(head: bytes, gib: int) -> bytes:
    """`head` then `gib` GiB of zeros, as concatenated gzip members (a valid gzip file of ~1 MB/GiB)."""
    block = gzip.compress(bytes(64 * MIB), compresslevel=9)
    return gzip.compress(head) + block * (16 * gib)


def _landed(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def _refused(source: Path, tmp_path: Path, match: str) -> str:
    with pytest.raises(GdlError, match=match) as info:
        _fetch(source, tmp_path / "dest", tmp_path)
    message = str(info.value)
    assert "\n" not in message and source.name in message
    assert _landed(tmp_path / "dest") == []  # no array, no hidden staging folder
    return message


def test_an_npy_header_declaring_a_huge_shape_is_refused_before_allocation(tmp_path):
    bomb = _npz(tmp_path / "bomb.npz", {"x_train.npy": _npy_header((10**6, 10**6)) + b"\x00" * 16})
    message = _refused(bomb, tmp_path, "declares shape")
    assert "(1000000, 1000000)" in message and "x_train" in message


def test_an_npz_member_that_inflates_past_the_file_limit_is_refused(tmp_path, monkeypatch):
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(64 * MIB, np.uint8))
    bomb = _npz(tmp_path / "zeros.npz", {"x_train.npy": buf.getvalue()})
    assert bomb.stat().st_size < MIB  # 64 MiB of zeros deflate to ~64 KB
    monkeypatch.setenv("GDL_ARCHIVE_MAX_FILE_BYTES", str(MIB))
    message = _refused(bomb, tmp_path, "GDL_ARCHIVE_MAX_FILE_BYTES")
    assert "inflates to" in message


@pytest.mark.parametrize("setting", ["GDL_ARCHIVE_MAX_TOTAL_BYTES", "GDL_ARCHIVE_MAX_FILE_BYTES"])
def test_an_npz_whose_arrays_together_exceed_a_limit_is_refused(tmp_path, monkeypatch, setting):
    """Each array fits; together (they are loaded at once) they pass the total or one-file limit."""
    import numpy as np

    members = {}
    for name in ("x_train", "x_test"):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.zeros(600 * 1024, np.uint8))
        members[f"{name}.npy"] = buf.getvalue()
    monkeypatch.setenv(setting, str(MIB))
    message = _refused(_npz(tmp_path / "two.npz", members), tmp_path, setting)
    assert "x_test.npy takes the arrays past the 1048576-byte limit" in message


def test_a_gzipped_idx_header_over_the_limit_is_refused_before_inflating(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx_header(64 * MIB) + bytes(64 * MIB), compresslevel=9))
    monkeypatch.setenv("GDL_ARCHIVE_MAX_FILE_BYTES", str(MIB))
    message = _refused(bomb, tmp_path, "declares shape")
    assert "GDL_ARCHIVE_MAX_FILE_BYTES" in message
    huge = tmp_path / "huge-idx3-ubyte.gz"
    huge.write_bytes(gzip.compress(_idx_header(65535, 65535, 65535) + b"\x00" * 8))
    monkeypatch.delenv("GDL_ARCHIVE_MAX_FILE_BYTES")  # the default limit refuses it too
    assert "(65535, 65535, 65535)" in _refused(huge, tmp_path, "declares shape")


def test_a_well_formed_gzipped_idx_and_npz_still_load(tmp_path):
    import numpy as np

    from models.inputs import formats

    idx = tmp_path / "labels.gz"
    idx.write_bytes(gzip.compress(_idx_header(2, 3) + bytes(range(6))))
    assert formats.load_arrays(idx)["data"].tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(_idx_header(2, 3) + bytes(5)))
    with pytest.raises(GdlError, match="holds 5 data bytes; its header says 6"):
        formats.load_arrays(short)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(6, dtype=">i4").reshape(2, 3))
    arrays = formats.load_arrays(_npz(tmp_path / "ok.npz", {"a.npy": buf.getvalue()}))
    assert arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]]


_UNDER_RLIMIT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from models.core.errors import GdlError
    from models.inputs import fetch as datasets
    from models.inputs.catalog import get_dataset, resolve_location
    from models.inputs.fetch import FetchPolicy
    dataset = get_dataset("mnist").model_copy(update={{"sha256": None}})
    source, dest = sys.argv[1], Path(sys.argv[2])
    try:
        datasets.fetch(dataset, resolve_location(dataset, source), dest, dest.parent,
                       FetchPolicy(attempts=1), log=lambda m: None)
    except GdlError as exc:
        print("gdl:", exc)
        sys.exit(3)
    """
)


def _under_rlimit(source: str, dest: Path, limit: int = 1536 * MIB) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("GDL_ARCHIVE_")}
    script = _UNDER_RLIMIT.format(limit=limit)
    return subprocess.run(
        [sys.executable, "-c", script, source, str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize("kind", ["npz", "idx", "http"])
def test_bombs_are_refused_within_bounded_memory_with_default_limits(
    tmp_path, kind, http_server, monkeypatch
):
    """Under an address-space limit of 1.5 GiB: an .npz declaring a 3 GiB array (a few bytes of
    data), or a ~3 MB gzipped IDX file whose 3-byte array is followed by 3 GiB of zeros, from a
    local file or as a gzip-encoded HTTP body."""
    from conftest import Fixtures

    if kind == "npz":
        source = _npz(tmp_path / "declared.npz", {"x_train.npy": _npy_header((3 << 30,)) + bytes(64)})
        expected = "declares shape (3221225472,)"
    else:
        source = tmp_path / "tail-idx1-ubyte.gz"
        source.write_bytes(_gzip_zeros_tail(_idx_header(3) + bytes([7, 1, 4]), gib=3))
        assert source.stat().st_size < 8 * MIB
        expected = "holds more than 3 data bytes"
    where = str(source)
    if kind == "http":
        monkeypatch.setattr(Fixtures, "body", source.read_bytes())
        where = f"{http_server[0]}/body"
    done = _under_rlimit(where, tmp_path / "dest")
    assert done.returncode == 3, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdl: ") and where in lines[0], lines
    assert done.stderr.count("\n") < 5, done.stderr  # no traceback
    assert expected in lines[0]
    assert _landed(tmp_path / "dest") == []
