"""The GDL_* settings: one module reads them, bad values are one-line errors, the README's table
is the generated one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.core.errors import GdlError
from models.core.settings import Settings, env_name, render_current, render_reference, settings

REPO = Path(__file__).resolve().parent.parent


def test_settings_follow_the_environment(monkeypatch):
    monkeypatch.delenv("GDL_FETCH_TIMEOUT", raising=False)
    assert settings().fetch_timeout == 60.0
    monkeypatch.setenv("GDL_FETCH_TIMEOUT", "2.5")
    assert settings().fetch_timeout == 2.5
    monkeypatch.setenv("GDL_FETCH_TIMEOUT", "")  # empty counts as unset
    assert settings().fetch_timeout == 60.0
    monkeypatch.setenv("GDL_EXTRA_TECHNIQUES", " a.b, c ,,")
    assert settings().extra_techniques == ("a.b", "c")


def test_the_s3_endpoint_falls_back_to_boto3s_variable(monkeypatch):
    monkeypatch.delenv("GDL_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert settings().s3_endpoint_url is None
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws.example")
    assert settings().s3_endpoint_url == "http://aws.example"
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", "")
    assert settings().s3_endpoint_url == "http://aws.example"
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", "http://gdl.example")
    assert settings().s3_endpoint_url == "http://gdl.example"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GDL_FETCH_TIMEOUT", "abc", "GDL_FETCH_TIMEOUT='abc': expected a number"),
        ("GDL_PUBLISH_ATTEMPTS", "many", "GDL_PUBLISH_ATTEMPTS='many': expected an integer"),
        ("GDL_PUBLISH_ATTEMPTS", "0", "GDL_PUBLISH_ATTEMPTS='0': expected an integer of at least 1"),
        ("GDL_HEARTBEAT_SECONDS", "10", "GDL_HEARTBEAT_SECONDS='10': expected an integer of at least 30"),
        ("GDL_FETCH_RATE_WINDOW", "0", "GDL_FETCH_RATE_WINDOW='0': expected a number greater than 0"),
        ("GDL_NATIVE_LOGS", "maybe", "GDL_NATIVE_LOGS='maybe': expected a boolean"),
        ("GDL_SHARED_STORAGE", "http://x/y", "GDL_SHARED_STORAGE='http://x/y': expected s3://bucket/prefix"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(GdlError) as caught:
        settings()
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message


def test_a_publish_folder_that_is_a_file_is_refused_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("GDL_S3_BUCKET", raising=False)
    a_file = tmp_path / "published"
    a_file.write_text("not a folder")
    for value, expected in [
        (a_file, f"GDL_PUBLISH_DIR='{a_file}': expected a folder, but it is a file"),
        (
            a_file / "sub",
            f"GDL_PUBLISH_DIR='{a_file / 'sub'}': expected a folder, but {a_file} on its way is a file",
        ),
    ]:
        monkeypatch.setenv("GDL_PUBLISH_DIR", str(value))
        with pytest.raises(GdlError) as caught:
            settings()
        assert str(caught.value) == expected
    monkeypatch.setenv("GDL_PUBLISH_DIR", str(tmp_path / "new" / "folder"))  # made when publishing
    assert settings().publish_dir == tmp_path / "new" / "folder"
    monkeypatch.setenv("GDL_PUBLISH_DIR", str(a_file))
    monkeypatch.setenv("GDL_S3_BUCKET", "b")  # with a bucket the folder is not used
    assert settings().publish_dir == a_file


def test_a_bad_value_fails_the_cli_in_one_line(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("GDL_FETCH_TIMEOUT", "abc")
    assert main(["settings"]) == 2
    assert capsys.readouterr().err == "gdl: error: GDL_FETCH_TIMEOUT='abc': expected a number\n"


def test_gdl_settings_prints_every_variable_without_credentials(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", "http://user:secret@s3.example:9000")
    monkeypatch.setenv("GDL_FETCH_TIMEOUT", "5")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert out == render_current()
    assert "GDL_S3_ENDPOINT_URL=http://s3.example:9000\n" in out
    assert "GDL_FETCH_TIMEOUT=5\n" in out
    assert "GDL_FETCH_DEADLINE=14400  (default)\n" in out
    assert "secret" not in out and "user" not in out
    assert [line.split("=")[0] for line in out.splitlines()] == [env_name(f) for f in Settings.model_fields]


def test_the_readme_table_is_the_generated_one():
    """Fails when a setting is added or changed without `gdl settings --reference --write`."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- settings-reference:start -->\n")[1].split("<!-- settings-reference:end -->")[0]
    assert block == render_reference()


# Reads of a GDL_ variable from the environment: os.environ["GDL_X"], os.environ.get("GDL_X"),
# os.getenv("GDL_X"), environ.pop(...). Setting one (for a child process) is allowed.
_READ = re.compile(r"""(environ\b|getenv\b)[^\n]{0,40}?["']GDL_""")
_SET = re.compile(r"""(environ\[\s*["']GDL_\w*["']\s*\]\s*=[^=]|setdefault|setenv)""")


def test_only_the_settings_module_reads_gdl_variables():
    offenders = []
    for folder in ("flows", "models", "tasks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "models/core/settings.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _READ.search(line) and not _SET.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "read GDL_ variables through models.core.settings:\n" + "\n".join(offenders)
    # The check itself catches the ways a read is written.
    for read in ('os.environ.get("GDL_X")', "os.environ['GDL_X']", 'os.getenv("GDL_X", "")'):
        assert _READ.search(read) and not _SET.search(read)
    assert not _SET.search('os.environ["GDL_X"] == "1"')
    assert _SET.search('os.environ["GDL_X"] = "1"') and _SET.search('monkeypatch.setenv("GDL_X", "1")')
