"""The data layer: real HTTP and S3 servers on loopback; nothing lands unless it is whole and right."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Fixtures

from models.datasets import FetchPolicy, decode_text, fetch, get_dataset
from models.files import GdlError

FAST = FetchPolicy(attempts=3, backoff=0.05, timeout=1.0)


def _landed(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


@pytest.fixture
def dataset():
    return replace(get_dataset("nietzsche"), remote_sha256=None)


def test_http_download_lands_whole_and_is_pinned(tmp_path, http_server, dataset):
    url, _ = http_server
    got = fetch(dataset, f"{url}/good", tmp_path / "d", tmp_path, FAST, log=lambda m: None)
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == Fixtures.good
    assert got["sha256"] == hashlib.sha256(Fixtures.good).hexdigest()
    assert f"{url}/good" in (tmp_path / "pins.json").read_text()


def test_known_hash_mismatch_is_an_error_leaving_nothing(tmp_path, http_server, dataset):
    url, _ = http_server
    wrong = replace(dataset, remote=f"{url}/good", remote_sha256="0" * 64)
    with pytest.raises(GdlError, match="does not match the expected"):
        fetch(wrong, "remote", tmp_path / "d", tmp_path, FAST)
    assert _landed(tmp_path / "d") == []


def test_content_changed_since_pinned_is_an_error_leaving_nothing(tmp_path, http_server, dataset):
    url, _ = http_server
    fetch(dataset, f"{url}/good", tmp_path / "first", tmp_path, FAST)
    # Same location now serves other bytes (a corrupt mirror): the pin catches it.
    pins = (tmp_path / "pins.json").read_text().replace(f"{url}/good", f"{url}/changed")
    (tmp_path / "pins.json").write_text(pins)
    with pytest.raises(GdlError, match="changed since it was first downloaded"):
        fetch(dataset, f"{url}/changed", tmp_path / "d", tmp_path, FAST)
    assert _landed(tmp_path / "d") == []


def test_truncated_body_is_retried_then_fails_leaving_nothing(tmp_path, http_server, dataset):
    url, hits = http_server
    with pytest.raises(GdlError, match="failed after 3 attempts"):
        fetch(dataset, f"{url}/truncated", tmp_path / "d", tmp_path, FAST, log=lambda m: None)
    assert hits["/truncated"] == 3
    assert _landed(tmp_path / "d") == []


def test_404_fails_at_once_without_retrying(tmp_path, http_server, dataset):
    url, hits = http_server
    with pytest.raises(GdlError, match="HTTP 404"):
        fetch(dataset, f"{url}/missing", tmp_path / "d", tmp_path, FAST)
    assert hits["/missing"] == 1
    assert _landed(tmp_path / "d") == []


def test_slow_server_times_out_and_fails_after_retries(tmp_path, http_server, dataset):
    url, hits = http_server
    with pytest.raises(GdlError, match="failed after 2 attempts"):
        fetch(
            dataset,
            f"{url}/slow",
            tmp_path / "d",
            tmp_path,
            FetchPolicy(attempts=2, backoff=0.05, timeout=0.5),
            log=lambda m: None,
        )
    assert hits["/slow"] == 2
    assert _landed(tmp_path / "d") == []


def test_transient_server_error_is_retried_with_backoff(tmp_path, http_server, dataset):
    url, hits = http_server
    notes = []
    fetch(dataset, f"{url}/flaky", tmp_path / "d", tmp_path, FAST, log=notes.append)
    assert hits["/flaky"] == 2 and len(notes) == 1 and "HTTP 503" in notes[0]
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == Fixtures.good


def test_binary_download_is_rejected_before_it_lands(tmp_path, http_server, dataset):
    url, _ = http_server
    with pytest.raises(GdlError, match="looks binary"):
        fetch(dataset, f"{url}/binary", tmp_path / "d", tmp_path, FAST)
    assert _landed(tmp_path / "d") == []


def test_s3_source_downloads_through_a_real_s3_server(tmp_path, s3, dataset):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="corpora/mine.txt", Body=Fixtures.good)
    got = fetch(dataset, f"s3://{bucket}/corpora/mine.txt", tmp_path / "d", tmp_path, FAST)
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == Fixtures.good
    assert got["location"] == f"s3://{bucket}/corpora/mine.txt"


def test_missing_s3_object_is_a_clear_error_leaving_nothing(tmp_path, s3, dataset):
    _, bucket = s3
    with pytest.raises(GdlError, match=f"s3://{bucket}/nope.txt failed: (404|NoSuchKey)"):
        fetch(dataset, f"s3://{bucket}/nope.txt", tmp_path / "d", tmp_path, FAST)
    assert _landed(tmp_path / "d") == []


def test_local_file_and_offline_sources(tmp_path, dataset):
    mine = tmp_path / "mine.txt"
    mine.write_text("A corpus of my own.\n" * 10, encoding="utf-8")
    fetch(dataset, str(mine), tmp_path / "d", tmp_path, FAST)
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == mine.read_bytes()
    fetch(dataset, "offline", tmp_path / "o", tmp_path, FAST)
    assert len((tmp_path / "o" / "corpus.txt").read_text(encoding="utf-8")) > 300_000


def test_unsupported_scheme_and_missing_file_are_errors(tmp_path, dataset):
    with pytest.raises(GdlError, match="unsupported source 'ftp://x/y'"):
        fetch(dataset, "ftp://x/y", tmp_path / "d", tmp_path, FAST)
    with pytest.raises(GdlError, match="does not exist"):
        fetch(dataset, str(tmp_path / "absent.txt"), tmp_path / "d", tmp_path, FAST)
    assert _landed(tmp_path / "d") == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"hello\x00world", "looks binary (NUL byte at offset 5)"),
        ("caf\u00e9".encode("latin-1"), "is not valid UTF-8 (byte 3)"),
        (b"   \n\t  ", "only whitespace"),
    ],
)
def test_corpus_decode_policy(data, message):
    with pytest.raises(GdlError) as err:
        decode_text(data, "x.txt")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_utf8_with_bom_is_accepted():
    assert decode_text("\ufeffcafé".encode(), "x") == "café"
