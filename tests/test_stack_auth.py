"""`gdl stack up` on a host other machines can reach needs basic auth (fast checks; the real
server is in test_stack_auth_e2e.py)."""

from __future__ import annotations

import base64
import socket
import subprocess

import pytest
from conftest import BIN, cli_env, free_port

from flows import stack
from models.core.errors import GdlError

GOOD = "alice:correct-horse:battery"  # the password may hold ':'


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts_need_no_auth(host):
    assert stack.is_loopback(host)
    assert stack.server_auth(host, {}) is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.0.2.2", "10.1.2.3", "fd00::2", "gpu-box", "localhost.example"]
)
def test_other_hosts_are_refused_without_auth_in_one_line(host):
    assert not stack.is_loopback(host)
    with pytest.raises(GdlError) as refused:
        stack.server_auth(host, {})
    message = str(refused.value)
    assert "\n" not in message and "PREFECT_SERVER_API_AUTH_STRING=user:password" in message
    assert stack.server_auth(host, {"PREFECT_SERVER_API_AUTH_STRING": GOOD}) == GOOD


@pytest.mark.parametrize(
    "bad",
    ["", "alice", "alice:", ":secret", ":", "al ice:secret", "alice:sec ret", "alice:secret\n", "a\tb:c"],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.2"])
def test_a_malformed_auth_string_is_refused_without_showing_it(host, bad):
    with pytest.raises(GdlError) as refused:
        stack.server_auth(host, {"PREFECT_SERVER_API_AUTH_STRING": bad})
    message = str(refused.value)
    assert "\n" not in message and "not user:password" in message and "value is not shown" in message
    assert len(bad.strip()) < 3 or bad.strip() not in message  # ':' is in any message


def test_the_stack_gives_the_server_and_every_client_it_starts_the_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    env = stack.stack_env(tmp_path, "192.0.2.2", 4300, None, GOOD)
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == env["PREFECT_API_AUTH_STRING"] == GOOD
    assert env["PREFECT_API_URL"] == "http://192.0.2.2:4300/api"
    assert "PREFECT_API_AUTH_STRING" not in stack.stack_env(tmp_path, "127.0.0.1", 4300, None)
    # Listening everywhere: the stack's own processes call it on loopback.
    assert (
        stack.stack_env(tmp_path, "0.0.0.0", 4300, None, GOOD)["PREFECT_API_URL"]
        == "http://127.0.0.1:4300/api"
    )
    assert (
        stack.stack_env(tmp_path, "fd00::2", 4300, None, GOOD)["PREFECT_API_URL"]
        == "http://[fd00::2]:4300/api"
    )


def test_failure_output_never_shows_the_credential():
    token = base64.b64encode(GOOD.encode()).decode()
    shown = stack.redact(f"header Basic {token}; env PREFECT_API_AUTH_STRING={GOOD}", GOOD)
    assert GOOD not in shown and token not in shown and "***" in shown
    assert stack.redact("nothing secret", None) == "nothing secret"


def test_a_refused_stack_starts_nothing(tmp_path, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError(f"started {args[0]}")

    monkeypatch.setattr(stack.subprocess, "Popen", started)
    monkeypatch.setattr(stack.subprocess, "run", started)
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    with pytest.raises(GdlError, match="lets other machines reach"):
        stack.up(tmp_path, host="0.0.0.0", port=free_port())
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "no-colon")
    with pytest.raises(GdlError, match="not user:password"):
        stack.up(tmp_path, host="127.0.0.1", port=free_port())
    assert not (tmp_path / ".prefect").exists()


@pytest.mark.parametrize("auth", [None, "alice-without-a-password"])
def test_gdl_stack_up_refuses_in_one_line_and_exits_non_zero(tmp_path, auth):
    port = free_port()
    extra = {"PREFECT_SERVER_API_AUTH_STRING": auth} if auth else {}
    done = subprocess.run(
        [str(BIN / "gdl"), "stack", "up", "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("gdl: error: ") and "PREFECT_SERVER_API_AUTH_STRING" in line
    if auth:
        assert auth not in line
    assert not (tmp_path / ".prefect").exists()  # no logs folder: no server, no worker
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
