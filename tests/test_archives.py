"""Archives from outside are extracted safely or not at all."""

from __future__ import annotations

import errno
import gzip
import io
import random
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from models.core.errors import GdlError
from models.inputs import archives
from models.inputs.archives import ArchiveLimits, archive_format, extract_archive

CONTENT = {"facades/train/1.jpg": b"one" * 100, "facades/test/2.jpg": b"two" * 50, "README": b"hi"}
METADATA = {"__MACOSX/facades/._1.jpg": b"junk", "facades/.DS_Store": b"junk"}


def make_zip(
    path: Path, members: dict[str, bytes] | list[tuple[str, bytes]], modes: dict | None = None
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items() if isinstance(members, dict) else members:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # raw, as a hostile writer would put it (ZipInfo() cuts at a NUL)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (modes or {}).get(name, 0) << 16
            zf.writestr(info, data)
    return path


def file_entry(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    if "\0" in name:  # only a pax header can carry a NUL
        info.pax_headers = {"path": name}
    return info, io.BytesIO(data)


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info, None


def make_tar(path: Path, members: list, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for member in members:
            tf.addfile(*(file_entry(*member) if isinstance(member[1], bytes) else member))
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def nothing_left(dest: Path) -> bool:
    """Neither the target nor any temporary folder beside it."""
    return not dest.exists() and not any(dest.parent.glob(f".{dest.name}.*"))


def rejected(archive: Path, limits: ArchiveLimits | None = None) -> str:
    """The one-line error extracting `archive` gives, after checking that nothing was left."""
    dest = archive.parent / "out"
    with pytest.raises(GdlError) as err:
        extract_archive(archive, dest, limits)
    assert nothing_left(dest)
    message = str(err.value)
    assert "\n" not in message and f"archive {archive.name}" in message
    return message


def test_zip_and_tar_gz_extract_the_same_tree_and_skip_os_metadata(tmp_path):
    zipped = make_zip(tmp_path / "a.zip", {"facades/empty/": b"", **CONTENT, **METADATA})
    tarred = make_tar(
        tmp_path / "a.tar.gz", [entry("facades/empty", tarfile.DIRTYPE), *CONTENT.items(), *METADATA.items()]
    )
    expected = {
        "facades": None,
        "facades/empty": None,
        "facades/train": None,
        "facades/test": None,
        **CONTENT,
    }
    for archive, kind in ((zipped, "zip"), (tarred, "tar")):
        dest = tmp_path / f"out-{kind}"
        summary = extract_archive(archive, dest)
        assert summary == {"format": kind, "members": 3, "bytes": 452, "skipped": 2}
        assert tree(dest) == expected
        assert not list(tmp_path.glob(f".{dest.name}.*"))


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_tar_compression_is_recognised_by_content_not_name(tmp_path, mode):
    archive = make_tar(tmp_path / "download", list(CONTENT.items()), mode)
    assert archive_format(archive) == "tar"
    assert archive_format(make_zip(tmp_path / "looks.tar", CONTENT)) == "zip"
    assert extract_archive(archive, tmp_path / "out")["members"] == 3
    assert tree(tmp_path / "out")["facades/train/1.jpg"] == CONTENT["facades/train/1.jpg"]


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../evil.txt", "escapes the target folder"),
        ("a/../../evil.txt", "escapes the target folder"),
        ("/etc/evil", "has an absolute path"),
        ("C:\\evil", "has an absolute path"),
        ("\\\\server\\share\\evil", "has an absolute path"),
        ("a\\..\\evil", "contains a backslash"),
        ("evil\nname", "contains a control character"),
        ("evil\x00name", "contains a control character"),
        ("", "has an empty name"),
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_hostile_member_names_are_rejected_leaving_nothing(tmp_path, name, rule, kind):
    members = [("ok.txt", b"fine"), (name, b"evil")]
    work = tmp_path / "in"
    work.mkdir()
    archive = make_zip(work / "h.zip", members) if kind == "zip" else make_tar(work / "h.tgz", members)
    assert rejected(archive).endswith(f"member {name!r} {rule}")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("member", "what"),
    [
        (entry("passwd", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (entry("hard", tarfile.LNKTYPE, "ok.txt"), "hard link"),
        (entry("tty", tarfile.CHRTYPE), "device file"),
        (entry("disk", tarfile.BLKTYPE), "device file"),
        (entry("pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_links_devices_and_fifos_in_a_tar_are_rejected_leaving_nothing(tmp_path, member, what):
    archive = make_tar(tmp_path / "l.tgz", [("ok.txt", b"fine"), member])
    assert f"member {member[0].name!r} is a {what}" in rejected(archive)


def test_a_symlink_in_a_zip_is_rejected_leaving_nothing(tmp_path):
    archive = make_zip(tmp_path / "l.zip", {"link": b"/etc/passwd"}, modes={"link": stat.S_IFLNK | 0o777})
    assert "member 'link' is a symbolic link" in rejected(archive)


def test_a_duplicate_member_is_rejected_leaving_nothing(tmp_path):
    assert "member './a.txt' appears twice" in rejected(
        make_tar(tmp_path / "d.tgz", [("a.txt", b"1"), ("./a.txt", b"2")])
    )
    with pytest.warns(UserWarning, match="Duplicate name"):
        zipped = make_zip(tmp_path / "d.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    assert "member 'a.txt' appears twice" in rejected(zipped)


def test_a_file_used_as_a_folder_is_rejected_leaving_nothing(tmp_path):
    archive = make_tar(tmp_path / "f.tgz", [("a", b"file"), ("a/b", b"inside a file?")])
    assert "member 'a/b' is inside 'a', which is a file" in rejected(archive)


@pytest.mark.parametrize(
    ("limits", "rule"),
    [
        (ArchiveLimits(max_members=2), "goes past the limit of 2 members (GDL_ARCHIVE_MAX_MEMBERS)"),
        (ArchiveLimits(max_file_bytes=200), "is larger than the 200-byte limit (GDL_ARCHIVE_MAX_FILE_BYTES)"),
        (ArchiveLimits(max_total_bytes=350), "past the 350-byte limit (GDL_ARCHIVE_MAX_TOTAL_BYTES)"),
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_limits_are_enforced_leaving_nothing(tmp_path, limits, rule, kind):
    members = list(CONTENT.items())
    archive = (
        make_zip(tmp_path / "a.zip", members) if kind == "zip" else make_tar(tmp_path / "a.tgz", members)
    )
    assert rule in rejected(archive, limits)


def test_headers_over_the_limits_are_rejected_before_any_member_is_read(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a member was opened")

    zipped = make_zip(tmp_path / "t.zip", CONTENT)
    tarred = make_tar(tmp_path / "t.tgz", [("big.bin", bytes(5000))])
    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    monkeypatch.setattr(tarfile.TarFile, "extractfile", never)
    # The zip's total is only over the limit at its last member: the central directory shows it.
    assert "member 'README' takes the total past" in rejected(zipped, ArchiveLimits(max_total_bytes=451))
    assert "member 'big.bin' is larger" in rejected(tarred, ArchiveLimits(max_file_bytes=1000))


def test_a_zip_whose_header_lies_about_the_size_is_rejected_leaving_nothing(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"big.bin": bytes(100_000)})
    data = bytearray(archive.read_bytes())
    # Claim 10 bytes uncompressed in both the local and the central header.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    assert "member 'big.bin'" in rejected(archive, ArchiveLimits(max_file_bytes=1000))


class Endless(io.RawIOBase):
    """A member stream that keeps producing zeros (up to a cap, so a failing test still ends)."""

    def __init__(self) -> None:
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.produced >= 64 << 20:
            return 0
        buffer[:] = bytes(len(buffer))
        self.produced += len(buffer)
        return len(buffer)


def test_a_member_stream_longer_than_its_header_is_stopped_by_the_bytes_written(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "bomb.zip", {"small.bin": bytes(10)})
    stream = Endless()
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: stream)
    assert "member 'small.bin' holds more than the 10 bytes its header declares" in rejected(archive)
    assert stream.produced <= archives.CHUNK


def tar_without_end_marker(path: Path) -> Path:
    make_tar(path, [("a.txt", b"a" * 600), ("b.txt", b"b")], "w")
    path.write_bytes(path.read_bytes()[: 512 * 3 + 512 * 2])  # pax header, header, 2 data blocks
    return path


def truncated_tar_gz(path: Path) -> Path:
    make_tar(path, [("big.bin", bytes(range(256)) * 400)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def corrupt_zip(path: Path) -> Path:
    make_zip(path, {"x.txt": b"some text that compresses " * 100})
    data = bytearray(path.read_bytes())
    data[60:80] = bytes(20)  # inside the compressed data of x.txt
    path.write_bytes(bytes(data))
    return path


def corrupt_tar_xz(path: Path) -> Path:
    make_tar(path, [("x.bin", random.Random(0).randbytes(20_000))], "w:xz")
    data = bytearray(path.read_bytes())
    data[10_000:10_020] = bytes(20)  # inside x.bin's data: the header still reads, the check fails
    path.write_bytes(bytes(data))
    return path


def zip_without_central_directory(path: Path) -> Path:
    make_zip(path, CONTENT)
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize(
    "make",
    [tar_without_end_marker, truncated_tar_gz, corrupt_zip, corrupt_tar_xz, zip_without_central_directory],
)
def test_truncated_and_corrupt_archives_are_one_line_errors_leaving_nothing(tmp_path, make):
    assert "is corrupt or truncated" in rejected(make(tmp_path / make.__name__))


def test_a_huge_tar_header_is_refused_before_it_is_read_into_memory(tmp_path):
    longname = tarfile.TarInfo("././@LongLink")
    longname.type, longname.size = tarfile.GNUTYPE_LONGNAME, 1 << 31
    with tarfile.open(tmp_path / "h.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(longname)  # the header alone: the 2 GiB name is only claimed
    assert "a tar header claims an implausible size" in rejected(tmp_path / "h.tar.gz")


def test_a_file_that_is_not_an_archive_is_rejected(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("just text")
    gzipped = tmp_path / "table.csv.gz"
    gzipped.write_bytes(gzip.compress(b"a,b\n1,2\n" * 100))
    for path in (plain, gzipped):
        assert archive_format(path) is None
        with pytest.raises(GdlError, match=f"^{path.name} is not a zip or tar archive$"):
            extract_archive(path, tmp_path / "out")
        assert nothing_left(tmp_path / "out")


def test_limits_come_from_the_environment_and_bad_values_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GDL_ARCHIVE_MAX_FILE_BYTES", "250")
    assert ArchiveLimits.from_env() == ArchiveLimits(max_file_bytes=250)
    assert "larger than the 250-byte limit" in rejected(make_zip(tmp_path / "a.zip", CONTENT))
    monkeypatch.setenv("GDL_ARCHIVE_MAX_MEMBERS", "lots")
    with pytest.raises(GdlError, match=r"^GDL_ARCHIVE_MAX_MEMBERS='lots': expected an integer$"):
        ArchiveLimits.from_env()
    monkeypatch.setenv("GDL_ARCHIVE_MAX_MEMBERS", "0")
    with pytest.raises(GdlError, match=r"^GDL_ARCHIVE_MAX_MEMBERS='0': expected an integer of at least 1$"):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")


def test_extracted_files_get_plain_permissions_whatever_the_archive_says(tmp_path):
    tarred = make_tar(
        tmp_path / "p.tar",
        [
            ("setuid.sh", b"hi", 0o4755),
            entry("locked", tarfile.DIRTYPE, mode=0o500),
            ("locked/x", b"x", 0o400),
        ],
        "w",
    )
    zipped = make_zip(tmp_path / "p.zip", {"setuid.sh": b"hi"}, modes={"setuid.sh": stat.S_IFREG | 0o6777})
    for archive in (tarred, zipped):
        dest = tmp_path / f"out-{archive.suffix}"
        extract_archive(archive, dest)
        modes = {rel: stat.S_IMODE((dest / rel).stat().st_mode) for rel in tree(dest)}
        assert modes == (
            {"setuid.sh": 0o644, "locked": 0o755, "locked/x": 0o644}
            if archive == tarred
            else {"setuid.sh": 0o644}
        )
        assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_the_target_must_be_missing_or_empty(tmp_path):
    archive = make_zip(tmp_path / "a.zip", CONTENT)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(GdlError, match="exists and is not an empty folder"):
        extract_archive(archive, full)
    assert tree(full) == {"keep.txt": b"mine"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert extract_archive(archive, empty)["members"] == 3


def test_a_disk_error_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(fd, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archives.os, "fchmod", disk_full)
    message = rejected(make_tar(tmp_path / "a.tgz", list(CONTENT.items())))
    assert "failed (OSError: [Errno 28] No space left on device)" in message
