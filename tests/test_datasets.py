"""The data layer: real HTTP and S3 servers on loopback; nothing lands unless it is whole and right."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import Fixtures

from models.core.errors import GdlError
from models.inputs import catalog as catalog_module
from models.inputs import fetch as datasets
from models.inputs import formats
from models.inputs.catalog import get_dataset, resolve_location
from models.inputs.fetch import FetchPolicy
from models.inputs.formats import decode_text

FAST = FetchPolicy(attempts=3, backoff=0.05, timeout=1.0)


def fetch(dataset, source, dest, raw_root, policy=FAST, log=lambda m: None):
    """Resolve a source the way a technique's parameter is resolved, then fetch it."""
    return datasets.fetch(dataset, resolve_location(dataset, source), dest, raw_root, policy, log=log)


def _landed(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


@pytest.fixture
def dataset():
    return get_dataset("nietzsche").model_copy(update={"sha256": None})


def test_http_download_lands_whole_and_is_pinned(tmp_path, http_server, dataset):
    url, _ = http_server
    got = fetch(dataset, f"{url}/good", tmp_path / "d", tmp_path, FAST, log=lambda m: None)
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == Fixtures.good
    assert got["sha256"] == hashlib.sha256(Fixtures.good).hexdigest()
    assert f"{url}/good" in (tmp_path / "pins.json").read_text()


def test_known_hash_mismatch_is_an_error_leaving_nothing(tmp_path, http_server, dataset):
    url, _ = http_server
    wrong = dataset.model_copy(update={"remote": f"{url}/good", "sha256": "0" * 64})
    with pytest.raises(GdlError, match="does not match the catalog"):
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


def test_a_rejected_first_download_does_not_pin_its_content(tmp_path, http_server, dataset):
    url, _ = http_server
    with pytest.raises(GdlError, match="looks binary"):
        fetch(dataset, f"{url}/binary", tmp_path / "d", tmp_path)
    pins = tmp_path / "pins.json"
    assert not pins.exists() or f"{url}/binary" not in pins.read_text()


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


def test_a_trickling_server_is_cut_off_by_the_minimum_rate_and_retried(tmp_path, http_server, dataset):
    url, hits = http_server
    policy = FetchPolicy(attempts=2, backoff=0.05, timeout=5.0, min_rate=1000.0, rate_window=0.3)
    notes: list[str] = []
    with pytest.raises(GdlError, match="failed after 2 attempts: too slow: .* below the minimum of 1000"):
        fetch(dataset, f"{url}/trickle", tmp_path / "d", tmp_path, policy, log=notes.append)
    assert hits["/trickle"] == 2 and "too slow" in notes[0]  # each retry is logged, with its reason
    assert _landed(tmp_path / "d") == []


def test_the_whole_download_has_a_deadline_retries_included(tmp_path, http_server, dataset):
    url, hits = http_server
    policy = FetchPolicy(attempts=5, backoff=0.05, timeout=5.0, min_rate=0.0, deadline=0.3)
    with pytest.raises(GdlError, match=r"took longer than its deadline of 0.3 s \(GDL_FETCH_DEADLINE\)"):
        fetch(dataset, f"{url}/trickle", tmp_path / "d", tmp_path, policy)
    assert hits["/trickle"] == 1  # a deadline is not retried
    assert _landed(tmp_path / "d") == []


def test_a_redirect_loop_fails_in_one_line_without_retrying(tmp_path, http_server, dataset):
    url, hits = http_server
    with pytest.raises(GdlError) as err:
        fetch(dataset, f"{url}/loop", tmp_path / "d", tmp_path, FAST)
    assert str(err.value) == f"download of {url}/loop failed: redirect loop (HTTP 302)"
    assert hits["/loop"] <= 11  # urllib's own limit, one attempt


def test_credentials_in_a_url_are_sent_and_never_shown(tmp_path, http_server, dataset, monkeypatch):
    url, hits = http_server
    host = url.removeprefix("http://")
    notes: list[str] = []
    monkeypatch.setenv("GDL_TEST_URL", f"http://user:s3cret@{host}/auth?X-Amz-Signature=sig")
    got = fetch(dataset, "env:GDL_TEST_URL", tmp_path / "d", tmp_path, log=notes.append)
    assert (tmp_path / "d" / "corpus.txt").read_bytes() == Fixtures.good
    assert got["location"] == f"{url}/auth"
    monkeypatch.setenv("GDL_TEST_URL", f"http://user:wrong@{host}/auth")
    with pytest.raises(GdlError) as err:
        fetch(dataset, "env:GDL_TEST_URL", tmp_path / "e", tmp_path, log=notes.append)
    assert str(err.value) == f"download of {url}/auth failed: HTTP 401 Unauthorized"
    assert hits["/auth?X-Amz-Signature=sig"] == 1 and hits["/auth"] == 1  # a 401 is not retried
    pins = (tmp_path / "pins.json").read_text()
    for shown in (pins, *notes, str(err.value)):
        assert "s3cret" not in shown and "wrong" not in shown and "sig" not in shown


def test_an_unresolvable_host_fails_at_once_in_one_line(tmp_path, dataset, monkeypatch):
    notes: list[str] = []
    monkeypatch.setenv("GDL_TEST_URL", "http://user:pass@nohost.invalid/x.txt")
    with pytest.raises(GdlError) as err:
        fetch(dataset, "env:GDL_TEST_URL", tmp_path / "d", tmp_path, log=notes.append)
    assert (
        str(err.value)
        == "download of http://nohost.invalid/x.txt failed: cannot resolve host 'nohost.invalid'"
    )
    assert notes == []  # not retried


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


def test_editing_one_catalog_entry_changes_only_that_entrys_downloads(tmp_path, monkeypatch):
    import shutil

    import yaml

    from tasks.steps import input_key

    catalog = tmp_path / "catalog.yaml"
    shutil.copy(catalog_module.CATALOG, catalog)
    monkeypatch.setattr(catalog_module, "CATALOG", catalog)

    def keys() -> dict[str, str]:
        return {
            (name, source): input_key(get_dataset(name), resolve_location(get_dataset(name), source))
            for name in ("nietzsche", "chelsea")
            for source in ("remote", "offline")
        }

    before = keys()
    entries = yaml.safe_load(catalog.read_text())
    entries["chelsea"]["description"] = "reworded"
    catalog.write_text(yaml.safe_dump(entries))
    assert keys() == before  # descriptions do not change bytes
    entries["chelsea"]["remote"] = "https://example.org/another-cat.png"
    catalog.write_text(yaml.safe_dump(entries))
    after = keys()
    assert after[("chelsea", "remote")] != before[("chelsea", "remote")]
    assert {k: v for k, v in after.items() if k != ("chelsea", "remote")} == {
        k: v for k, v in before.items() if k != ("chelsea", "remote")
    }


def test_an_edited_local_source_gets_a_new_download_key(tmp_path):
    from tasks.steps import input_key

    dataset = get_dataset("nietzsche")
    mine = tmp_path / "mine.txt"
    mine.write_text("first version of my corpus\n" * 10)
    before = input_key(dataset, resolve_location(dataset, str(mine)))
    assert input_key(dataset, resolve_location(dataset, str(mine))) == before
    mine.write_text("second, longer version of my corpus\n" * 10)
    assert input_key(dataset, resolve_location(dataset, str(mine))) != before


def test_folder_and_array_inputs_from_s3_and_local_sources(tmp_path, s3):
    import numpy as np

    from models.core.files import npz_bytes
    from models.core.images import png_bytes

    client, bucket = s3
    picture = png_bytes(np.zeros((8, 8, 3), np.uint8))
    for key in ("imgs/a.png", "imgs/sub/b.png", "imgs/.hidden"):
        client.put_object(Bucket=bucket, Key=key, Body=picture)
    textures = get_dataset("textures")
    got = fetch(textures, f"s3://{bucket}/imgs/", tmp_path / "s", tmp_path)
    assert sorted(p.name for p in (tmp_path / "s" / "textures").rglob("*")) == ["a.png", "b.png", "sub"]
    assert got["location"] == f"s3://{bucket}/imgs/"
    # Arrays: an .npz without pickles, and MNIST's original IDX format (gzipped).
    mnist = get_dataset("mnist").model_copy(update={"sha256": None})
    npz = tmp_path / "digits.npz"
    npz.write_bytes(npz_bytes({"x_train": np.zeros((2, 28, 28), np.uint8)}))
    fetch(mnist, str(npz), tmp_path / "n", tmp_path)
    assert formats.load_arrays(tmp_path / "n" / "mnist.npz")["x_train"].shape == (2, 28, 28)
    import gzip

    idx = tmp_path / "labels.idx1-ubyte.gz"
    idx.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 1, 4])))
    fetch(mnist, str(idx), tmp_path / "i", tmp_path)
    assert formats.load_arrays(tmp_path / "i" / "mnist.npz")["data"].tolist() == [7, 1, 4]
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GdlError, match="pickled.npz"):
        fetch(mnist, str(pickled), tmp_path / "p", tmp_path)
    assert _landed(tmp_path / "p") == []


def test_offline_image_folder_weights_and_digits_land_checked(tmp_path):
    fetch(get_dataset("textures"), "offline", tmp_path / "t", tmp_path)
    assert sorted(p.name for p in (tmp_path / "t" / "textures").iterdir()) == [
        "brick.png",
        "grass.png",
        "gravel.png",
    ]
    got = fetch(get_dataset("chelsea"), "offline", tmp_path / "c", tmp_path)
    assert got["sha256"] == get_dataset("chelsea").sha256  # the packaged file is the remote one
    digits = fetch(get_dataset("mnist"), "offline", tmp_path / "m", tmp_path)
    arrays = formats.load_arrays(tmp_path / "m" / "mnist.npz")
    assert arrays["x_train"].shape == (4000, 28, 28) and sorted(set(arrays["y_test"].tolist())) == list(
        range(10)
    )
    assert digits == fetch(get_dataset("mnist"), "offline", tmp_path / "m2", tmp_path)  # same bytes twice
    text = tmp_path / "not-weights.pth"
    text.write_text("hello")
    with pytest.raises(GdlError, match="is not a weights file"):
        fetch(get_dataset("mobilenet_v2_imagenet"), str(text), tmp_path / "w", tmp_path)
    with pytest.raises(GdlError, match="is not an image"):
        fetch(get_dataset("chelsea"), str(text), tmp_path / "x", tmp_path)
    assert _landed(tmp_path / "w") == [] and _landed(tmp_path / "x") == []


def test_the_painted_style_stand_in_is_reproducible_colourful_and_textured():
    import io

    import numpy as np
    from PIL import Image

    from models.inputs.offline import load, source_version

    first = load("painted_strokes", {})
    assert first == load("painted_strokes", {})  # the same bytes: cached downloads stay valid
    image = np.asarray(Image.open(io.BytesIO(first)).convert("RGB")).astype(float)
    saturation = image.max(axis=2) - image.min(axis=2)
    assert saturation.mean() > 80  # vivid colour, not a dark field of stars
    assert np.abs(np.diff(image, axis=1)).mean() > 8  # brush strokes: texture at every scale
    blue, yellow = image[..., 2] > image[..., 0] + 60, image[..., 0] > image[..., 2] + 60
    assert blue.mean() > 0.5 and yellow.mean() > 0.05
    assert source_version("painted_strokes", {}).startswith("painted_strokes ")
