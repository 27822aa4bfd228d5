"""Issue 16 section 3: secrets in sources. Redaction whatever a location's shape, credentials kept
out of parameters (env:NAME), and bad ports refused in one line."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import cli_env, gdl

from models.core.errors import GdlError, RetryableError
from models.inputs import fetch as fetching
from models.inputs.catalog import get_dataset, redact, redact_text, resolve_location
from models.inputs.fetch import FetchPolicy
from tasks.steps import input_key

FAST = FetchPolicy(attempts=2, backoff=0.01, timeout=5)
SECRETS = ("s3cret", "SIGSECRET", "AKIAEXAMPLE", "wJalrXUtnFEMI")


@pytest.fixture
def dataset():
    return get_dataset("nietzsche")


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize(
    ("location", "kept"),
    [
        ("[http://user:s3cret@h.example/x?X-Amz-Signature=SIGSECRET]", "[http://h.example/x"),
        ("http:/user:s3cret@h.example/x.txt", "http:/h.example/x.txt"),
        ("s3://b/k.txt?X-Amz-Signature=SIGSECRET", "s3://b/k.txt"),
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCY@bucket/key", "s3://bucket/key"),
        ("https://user:pa s3cret@h.example:8443/c.txt#SIGSECRET", "https://h.example:8443/c.txt"),
        ("user:s3cret@h.example/x.txt", "h.example/x.txt"),
        ("/local/path.txt", "/local/path.txt"),
        ("env:GDL_SOURCE", "env:GDL_SOURCE"),
    ],
)
def test_redact_drops_credentials_and_queries_whatever_the_shape(location, kept):
    assert redact(location) == kept


def test_redact_text_redacts_every_url_in_a_message_and_keeps_the_rest():
    text = (
        'Could not connect to the endpoint URL: "http://AKIAEXAMPLE:s3cret@s3.local:9000/b/k?'
        'X-Amz-Signature=SIGSECRET" (see https://u:s3cret@h.example/x?sig=SIGSECRET).'
    )
    assert redact_text(text) == (
        'Could not connect to the endpoint URL: "http://s3.local:9000/b/k" (see https://h.example/x).'
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("[http://user:s3cret@h.example/x?X-Amz-Signature=SIGSECRET]", "unsupported source"),
        ("http:/user:s3cret@h.example/x.txt", "looks like a URL with one slash"),
        ("http://user:s3cret@h.example/x.txt", "give env:NAME instead"),
        ("https://h.example/x.txt?X-Amz-Signature=SIGSECRET", "give env:NAME instead"),
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/key", "AWS_ACCESS_KEY_ID"),
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket", "AWS_ACCESS_KEY_ID"),
        ("s3://b/k.txt?X-Amz-Signature=SIGSECRET", "takes no credentials or query"),
    ],
)
def test_a_source_with_secrets_is_refused_in_one_line_that_holds_none(dataset, source, message):
    with pytest.raises(GdlError) as err:
        resolve_location(dataset, source)
    shown = str(err.value)
    assert message in shown and "\n" not in shown
    _clean(shown)


def test_an_env_source_reads_the_url_at_use_and_its_cache_identity_holds_no_secret(dataset, monkeypatch):
    monkeypatch.setenv("GDL_TEST_URL", "https://user:s3cret@h.example/c.txt?X-Amz-Signature=SIGSECRET")
    location = resolve_location(dataset, "env:GDL_TEST_URL")
    assert location == "https://user:s3cret@h.example/c.txt?X-Amz-Signature=SIGSECRET"
    key = input_key(dataset, location)
    # A renewed signature names the same bytes: same cache slot; another object does not.
    monkeypatch.setenv("GDL_TEST_URL", "https://user:s3cret@h.example/c.txt?X-Amz-Signature=OTHER")
    assert input_key(dataset, resolve_location(dataset, "env:GDL_TEST_URL")) == key
    monkeypatch.setenv("GDL_TEST_URL", "https://h.example/d.txt")
    assert input_key(dataset, resolve_location(dataset, "env:GDL_TEST_URL")) != key
    monkeypatch.delenv("GDL_TEST_URL")
    with pytest.raises(GdlError, match="environment variable GDL_TEST_URL is not set"):
        resolve_location(dataset, "env:GDL_TEST_URL")
    with pytest.raises(GdlError, match="expected env:NAME"):
        resolve_location(dataset, "env:not a name")


def test_a_failed_s3_download_names_its_location_without_the_query(tmp_path, s3, dataset):
    _, bucket = s3
    with pytest.raises(GdlError) as err:  # fetch is given the location as is: no resolve_location
        fetching.fetch(
            dataset, f"s3://{bucket}/nope.txt?X-Amz-Signature=SIGSECRET", tmp_path / "d", tmp_path, FAST
        )
    assert f"s3://{bucket}/nope.txt failed" in str(err.value)
    _clean(str(err.value))


def test_an_s3_endpoint_that_is_down_is_named_without_credentials(tmp_path, dataset, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", f"http://user:s3cret@127.0.0.1:{free_port()}")
    notes: list[str] = []
    with pytest.raises((GdlError, RetryableError)) as err:
        fetching.fetch(dataset, "s3://b/k.txt", tmp_path / "d", tmp_path, FAST, log=notes.append)
    assert "s3://b/k.txt" in str(err.value)
    for text in (str(err.value), *notes):
        _clean(text)


def test_a_missing_local_source_with_a_scheme_typo_is_not_echoed(tmp_path, dataset):
    with pytest.raises(GdlError) as err:
        fetching.fetch(dataset, "http:/user:s3cret@h.example/x.txt", tmp_path / "d", tmp_path, FAST)
    assert "does not exist" in str(err.value)
    _clean(str(err.value))


def test_a_run_from_an_env_source_keeps_its_secret_out_of_prefect_and_every_file(project, http_server):
    """The URL (password, presigned query) is in the environment only: the flow run's parameters
    in Prefect's database say env:GDL_TEST_URL, and nothing gdl writes or prints holds it."""
    url, hits = http_server
    host = url.removeprefix("http://")
    env = cli_env(project, GDL_TEST_URL=f"http://user:s3cret@{host}/auth?X-Amz-Signature=SIGSECRET")
    env.pop("PREFECT_API_URL", None)  # the temporary server: its database is in the project
    result = gdl(project, "run", "text_lstm", "--set", "text_lstm.source=env:GDL_TEST_URL", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hits.get("/auth?X-Amz-Signature=SIGSECRET") == 1  # downloaded with the real URL
    _clean(result.stdout + result.stderr)
    databases = list(project.rglob("*.db"))
    assert databases
    with sqlite3.connect(databases[0]) as db:
        params = [row[0] for row in db.execute("SELECT parameters FROM flow_run")]
    assert any("env:GDL_TEST_URL" in p for p in params)
    for path in project.rglob("*"):
        if path.is_file():
            _clean(path.read_bytes().decode("latin-1"))


def test_a_published_parameter_is_redacted_whatever_its_shape():
    from tasks.publish import _public

    shown = _public(["http:/user:s3cret@h.example/x.txt", "[http://u:s3cret@h.example/x?sig=SIGSECRET]"])
    assert shown == ["http:/h.example/x.txt", "[http://h.example/x"]


LEAKY = "download of http://u:s3cret@h.example/x?X-Amz-Signature=SIGSECRET failed"


def test_the_cli_redacts_an_error_line_whatever_raised_it(project, monkeypatch, capsys):
    """A safety net: an error from code that forgot to redact still prints no secret."""
    import flows.config
    from flows.cli import main

    def leaky(*args, **kwargs):
        raise GdlError(LEAKY)

    monkeypatch.setattr(flows.config, "resolve_params", leaky)
    assert main(["run", "text_lstm"]) == 2
    assert capsys.readouterr().err == "gdl: error: download of http://h.example/x failed\n"


def test_the_error_artifact_in_prefect_is_redacted(monkeypatch):
    import prefect.artifacts

    from tasks._prefect import report_failure

    made: list[str] = []
    monkeypatch.setattr(
        prefect.artifacts, "create_markdown_artifact", lambda **kw: made.append(kw["markdown"])
    )
    report_failure("text_lstm", GdlError(LEAKY))
    assert made and "http://h.example/x failed" in made[0]
    _clean(made[0])


def test_shared_storage_notes_name_an_endpoint_without_its_credentials(project, monkeypatch):
    from conftest import free_port

    from tasks import shared_storage

    monkeypatch.setenv("GDL_SHARED_STORAGE", "s3://bucket/prefix")
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", f"http://user:s3cret@127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    notes: list[str] = []
    assert shared_storage.pull_slot(project, project / "data" / "slot", "k", notes.append) is False
    assert notes and "127.0.0.1" in notes[0]
    for note in notes:
        _clean(note)
