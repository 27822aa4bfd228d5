"""Publishing: the run directory, a local folder, and a real S3-compatible server on loopback."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import free_port, run_steps

from models.core.errors import GdlError, RetryableError
from models.core.files import safe_relpath
from tasks import publish


def _publish_through(monkeypatch, bucket: str, endpoint: str) -> None:
    """Publish to `bucket` through `endpoint` (a failing_s3_proxy), two attempts 50 ms apart."""
    monkeypatch.setenv("GDL_S3_BUCKET", bucket)
    monkeypatch.setenv("GDL_PUBLISH_ATTEMPTS", "2")
    monkeypatch.setenv("GDL_PUBLISH_BACKOFF", "0.05")
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", endpoint)


def test_run_directory_holds_report_samples_and_a_true_manifest(project, steps):
    result = publish.run("text_lstm", steps["params"], steps["upstream"])
    run = project / result["run_dir"]
    assert run.parent == project / "data" / "runs" / "text_lstm"
    for name in ("params.json", "metrics.json", "report.html", "manifest.json", "history.csv"):
        assert (run / name).is_file(), name
    samples = sorted(p.name for p in (run / "samples").glob("*.txt"))
    assert samples == sorted(f"temperature_{t}.txt" for t in ("0.2", "0.5", "1.0", "1.2"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert "samples/temperature_0.2.txt" in manifest["files"]
    for rel, entry in manifest["files"].items():
        data = (run / rel).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    html = (run / "report.html").read_text()
    assert html.count("Temperature ") == 4 and "data:image/png;base64," in html
    assert "src='http" not in html  # self-contained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["val_bits_per_char"] > 0
    assert json.loads((run / "params.json").read_text())["params"]["maxlen"] == 12


def test_local_publish_copies_the_run_and_writes_latest(project, steps):
    result = publish.run("text_lstm", steps["params"], steps["upstream"])
    run_id = result["run_dir"].rsplit("/", 1)[-1]
    published = project / "data" / "published" / "text_lstm"
    latest = json.loads((published / "latest.json").read_text())
    assert latest["run_id"] == run_id
    assert (published / latest["report"]).read_bytes() == (project / result["report"]).read_bytes()


def test_a_locally_republished_run_goes_to_a_new_folder_leaving_the_published_one_as_it_was(project, steps):
    first = publish.run("text_lstm", steps["params"], steps["upstream"])
    run_id = first["run_dir"].rsplit("/", 1)[-1]
    published = project / "data" / "published" / "text_lstm"
    before = {
        p.relative_to(published): p.read_bytes() for p in (published / run_id).rglob("*") if p.is_file()
    }
    again = publish.run("text_lstm", steps["params"], steps["upstream"])  # report.html rebuilt
    after = {p.relative_to(published): p.read_bytes() for p in (published / run_id).rglob("*") if p.is_file()}
    assert after == before
    latest = json.loads((published / "latest.json").read_text())
    assert latest["run_id"] == run_id and latest["report"] != f"{run_id}/report.html"
    assert (published / latest["report"]).read_bytes() == (project / again["report"]).read_bytes()
    manifest = json.loads((published / latest["manifest"]).read_text())
    for rel, entry in manifest["files"].items():
        body = (published / latest["manifest"]).parent.joinpath(rel).read_bytes()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_s3_publish_uploads_every_file_with_content_types_then_latest(project, steps, s3, monkeypatch):
    client, bucket = s3
    monkeypatch.setenv("GDL_S3_BUCKET", bucket)
    monkeypatch.setenv("GDL_S3_PREFIX", "nightly")
    result = publish.run("text_lstm", steps["params"], steps["upstream"])
    run_id = result["run_dir"].rsplit("/", 1)[-1]
    assert result["published"] == f"s3://{bucket}/nightly/text_lstm/{run_id}/report.html"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    manifest = json.loads((project / result["run_dir"] / "manifest.json").read_text())
    expected = {f"nightly/text_lstm/{run_id}/{rel}" for rel in [*manifest["files"], "manifest.json"]}
    assert keys == expected | {"nightly/text_lstm/latest.json", "nightly/index.html"}
    head = client.head_object(Bucket=bucket, Key=f"nightly/text_lstm/{run_id}/report.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    png = client.head_object(Bucket=bucket, Key=f"nightly/text_lstm/{run_id}/loss_curve.png")
    assert png["ContentType"] == "image/png"
    latest = json.loads(client.get_object(Bucket=bucket, Key="nightly/text_lstm/latest.json")["Body"].read())
    assert latest["run_id"] == run_id


def test_s3_down_fails_clearly_after_retries_and_keeps_local_results(project, steps, monkeypatch):
    monkeypatch.setenv("GDL_S3_BUCKET", "anything")
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "secret-id-should-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-should-not-leak")
    monkeypatch.setenv("GDL_PUBLISH_ATTEMPTS", "3")
    monkeypatch.setenv("GDL_PUBLISH_BACKOFF", "0.05")
    with pytest.raises(publish.PublishError) as err:
        publish.run("text_lstm", steps["params"], steps["upstream"])
    message = str(err.value)
    assert "failed after 3 attempts" in message and "is intact" in message
    assert "should-not-leak" not in message
    run = project / steps["upstream"]["sample"]["dir"] / ".."
    manifest = json.loads((run / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((run / rel).read_bytes()).hexdigest() == entry["sha256"]


def test_a_missing_bucket_fails_at_once_without_retries(project, steps, s3, monkeypatch, caplog):
    monkeypatch.setenv("GDL_S3_BUCKET", "no-such-bucket-here")
    monkeypatch.setenv("GDL_PUBLISH_ATTEMPTS", "4")
    monkeypatch.setenv("GDL_PUBLISH_BACKOFF", "5")  # a retry would make this test slow to fail
    with caplog.at_level("WARNING", logger="gdl"), pytest.raises(GdlError) as err:
        publish.run("text_lstm", steps["params"], steps["upstream"])
    assert not isinstance(err.value, RetryableError)  # Prefect's task-level retry skips it too
    message = str(err.value)
    assert "NoSuchBucket" in message and "is intact" in message and "attempts" not in message
    assert "\n" not in message
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_transient_upload_failures_are_logged_with_their_reason(
    project, steps, s3, failing_s3_proxy, monkeypatch, caplog
):
    _, bucket = s3
    _publish_through(monkeypatch, bucket, failing_s3_proxy(0))  # every request answered 503
    with caplog.at_level("WARNING", logger="gdl"), pytest.raises(publish.PublishError):
        publish.run("text_lstm", steps["params"], steps["upstream"])
    retries = [r.getMessage() for r in caplog.records if "retry in" in r.getMessage()]
    assert len(retries) == 1 and "attempt 1 of 2" in retries[0] and "503" in retries[0]


def test_outage_mid_publish_never_moves_latest_to_a_partial_run(
    project, steps, s3, failing_s3_proxy, monkeypatch
):
    client, bucket = s3
    _publish_through(monkeypatch, bucket, failing_s3_proxy(100))
    first = publish.run("text_lstm", steps["params"], steps["upstream"])
    first_id = first["run_dir"].rsplit("/", 1)[-1]

    changed = run_steps(temperatures=[0.7])
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", failing_s3_proxy(3))  # dies after 3 uploads
    with pytest.raises(publish.PublishError):
        publish.run("text_lstm", changed["params"], changed["upstream"])
    latest = json.loads(client.get_object(Bucket=bucket, Key="gdl/text_lstm/latest.json")["Body"].read())
    assert latest["run_id"] == first_id


def test_a_publish_folder_replaced_by_a_file_since_it_was_checked_fails_in_one_line(
    project, steps, monkeypatch
):
    folder = project / "published-here"
    monkeypatch.setenv("GDL_PUBLISH_DIR", str(folder))
    publish.settings()  # read (and checked) while the folder could still be made
    folder.write_text("a file now")
    with pytest.raises(GdlError) as caught:
        publish.run("text_lstm", steps["params"], steps["upstream"])
    assert str(caught.value) == f"cannot publish to the folder {folder}: it is a file"
    assert folder.read_text() == "a file now"


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs", "a//b", "a/./b", "a/../../b", "x\\y"])
def test_hostile_keys_and_names_are_refused(bad):
    with pytest.raises(GdlError):
        safe_relpath(bad)


def test_hostile_s3_prefix_is_refused(project, steps, monkeypatch):
    monkeypatch.setenv("GDL_S3_BUCKET", "b")
    monkeypatch.setenv("GDL_S3_PREFIX", "../../escape")
    with pytest.raises(GdlError, match="unsafe S3 prefix"):
        publish.run("text_lstm", steps["params"], steps["upstream"])


def test_gallery_lists_every_run_with_the_latest_first_and_a_trend(project, steps):
    first = publish.run("text_lstm", steps["params"], steps["upstream"])
    changed = run_steps(temperatures=[0.9])
    second = publish.run("text_lstm", changed["params"], changed["upstream"])
    gallery = (project / second["gallery"]).read_text()
    first_id, second_id = (r["run_dir"].rsplit("/", 1)[-1] for r in (first, second))
    assert f"Latest: <a href='text_lstm/{second_id}/report.html'>" in gallery
    assert gallery.index(second_id, gallery.index("<table>")) < gallery.index(
        first_id, gallery.index("<table>")
    )
    assert "data:image/png;base64," in gallery  # metric trend across the two runs
    published = project / "data" / "published" / "index.html"
    assert published.read_text() == gallery
    for link in (f"text_lstm/{first_id}/report.html", f"text_lstm/{second_id}/report.html"):
        assert (published.parent / link).is_file()


def test_published_s3_gallery_lists_runs_from_every_machine(project, steps, s3, monkeypatch):
    client, bucket = s3
    monkeypatch.setenv("GDL_S3_BUCKET", bucket)
    # Another machine published a run earlier; this machine has never seen it locally.
    other = {"run_id": "0123456789ab", "created_at": "2026-01-01T00:00:00.000+00:00", "files": {}}
    client.put_object(
        Bucket=bucket, Key="gdl/text_lstm/0123456789ab/manifest.json", Body=json.dumps(other).encode()
    )
    client.put_object(
        Bucket=bucket,
        Key="gdl/text_lstm/0123456789ab/metrics.json",
        Body=json.dumps({"val_bits_per_char": 3.5}).encode(),
    )
    client.put_object(Bucket=bucket, Key="gdl/..%2f/evil/manifest.json", Body=b"{}")
    result = publish.run("text_lstm", steps["params"], steps["upstream"])
    run_id = result["run_dir"].rsplit("/", 1)[-1]
    gallery = client.get_object(Bucket=bucket, Key="gdl/index.html")["Body"].read().decode()
    assert f"text_lstm/{run_id}/report.html" in gallery
    assert "text_lstm/0123456789ab/report.html" in gallery
    assert "evil" not in gallery


def test_a_republished_run_lists_only_the_current_reports_files(project, steps):
    first = publish.run("text_lstm", steps["params"], steps["upstream"])
    run = project / first["run_dir"]
    (run / "old_plot.png").write_bytes(b"from an earlier report")
    again = publish.run("text_lstm", steps["params"], steps["upstream"])
    assert not (run / "old_plot.png").exists()
    assert "old_plot.png" not in json.loads((run / "manifest.json").read_text())["files"]
    assert again["run_dir"] == first["run_dir"]


def test_a_manifest_pointing_outside_data_is_refused_when_reporting(project, steps):
    hostile = {**steps["upstream"], "train": {**steps["upstream"]["train"], "dir": "/etc"}}
    with pytest.raises(GdlError, match="unsafe step directory"):
        publish.run("text_lstm", steps["params"], hostile)


def test_step_outputs_runs_and_published_copies_have_a_new_folders_permissions(project, steps):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    publish.run("text_lstm", steps["params"], steps["upstream"])
    expected = 0o777 & ~mask
    assert expected != 0o700, "the test needs a umask that lets others read (e.g. 022)"
    folders = [p for p in (project / "data").rglob("*") if p.is_dir()]
    assert any(p.name == "samples" for p in folders) and any("published" in p.parts for p in folders)
    wrong = {str(p.relative_to(project)): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders}
    wrong = {k: v for k, v in wrong.items() if v != oct(expected)}
    assert not wrong, f"staging folders keep mkdtemp's 0700: {wrong}"


def test_temperatures_that_print_alike_keep_a_sample_and_an_artifact_each(project, steps):
    """Issue 7 item 5: 0.5 and 0.5000000001 are two temperatures: two samples, two sections,
    two artifacts (they used to share a name and one silently replaced the other)."""
    from models.reporting.report import Text, artifact_plan

    close = run_steps(temperatures=[0.5, 0.5000000001])
    result = publish.run("text_lstm", close["params"], close["upstream"])
    run = project / result["run_dir"]
    assert len(list((run / "samples").glob("temperature_*.txt"))) == 2
    built = publish.assemble("text_lstm", close["params"], close["upstream"], run)
    texts = [s for s in built["report"].sections if isinstance(s, Text)]
    assert len(texts) == 2 and texts[0].caption != texts[1].caption
    keys = [item["key"] for item in artifact_plan(built["report"], built["provenance"], built["files"], "x")]
    assert len(keys) == len(set(keys)) and sum("temperature" in k for k in keys) == 2


def test_credentials_in_a_source_url_are_written_nowhere(project, http_server, caplog, monkeypatch):
    """Issue 7 item 1: a source with user:password@ and a presigned query downloads, and neither
    reaches the run directory, the published copy, the step outputs or the logs. (Issue 16: such
    a URL is given through env:NAME, so it is not a parameter either.)"""
    url, _ = http_server
    host = url.removeprefix("http://")
    monkeypatch.setenv("GDL_TEST_URL", f"http://user:s3cret@{host}/auth?X-Amz-Signature=sig0123")
    with caplog.at_level("INFO"):
        done = run_steps(source="env:GDL_TEST_URL")
        result = publish.run("text_lstm", done["params"], done["upstream"])
    assert (project / result["run_dir"] / "report.html").is_file()
    written = [
        p for p in (project / "data").rglob("*") if p.is_file() and p.suffix in (".json", ".html", ".csv")
    ]
    assert written
    for text in [p.read_text(errors="replace") for p in written] + [r.getMessage() for r in caplog.records]:
        assert "s3cret" not in text and "sig0123" not in text


def _published_run(client, bucket: str, technique: str = "text_lstm") -> tuple[str, dict[str, bytes]]:
    """The run `latest.json` points at: its key prefix and every object its manifest lists."""
    base = f"gdl/{technique}/"
    latest = json.loads(client.get_object(Bucket=bucket, Key=base + "latest.json")["Body"].read())
    run_prefix = base + latest["manifest"].rsplit("/", 1)[0] + "/"
    manifest = client.get_object(Bucket=bucket, Key=base + latest["manifest"])["Body"].read()
    objects = {"manifest.json": manifest}
    for rel, entry in json.loads(manifest)["files"].items():
        body = client.get_object(Bucket=bucket, Key=run_prefix + rel)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], rel
        objects[rel] = body
    assert latest["report"] == latest["manifest"].rsplit("/", 1)[0] + "/report.html"
    return run_prefix, objects


def test_republishing_through_a_failing_manifest_upload_never_changes_the_published_run(
    project, steps, s3, failing_s3_proxy, monkeypatch
):
    client, bucket = s3
    _publish_through(monkeypatch, bucket, failing_s3_proxy(10_000))
    publish.run("text_lstm", steps["params"], steps["upstream"])
    before = _published_run(client, bucket)
    # The same run again (report.html is rebuilt with a new time), its manifest's upload failing.
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", failing_s3_proxy(10_000, refuse="/manifest.json"))
    with pytest.raises(publish.PublishError) as err:
        publish.run("text_lstm", steps["params"], steps["upstream"])
    message = str(err.value)
    assert "\n" not in message and "text_lstm/latest.json was not changed" in message
    assert _published_run(client, bucket) == before  # every byte a reader of latest sees, unchanged
    # Published again with the endpoint well: latest moves to a new prefix, the old one stays whole.
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", failing_s3_proxy(10_000))
    result = publish.run("text_lstm", steps["params"], steps["upstream"])
    prefix, objects = _published_run(client, bucket)
    assert prefix != before[0] and result["published"] == f"s3://{bucket}/{prefix}report.html"
    assert objects["report.html"] != before[1]["report.html"]
    for rel, body in before[1].items():
        assert client.get_object(Bucket=bucket, Key=before[0] + rel)["Body"].read() == body
