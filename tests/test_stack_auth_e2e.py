"""A stack other machines can reach (issue 18, section 5): `gdl stack up` on a non-loopback
address of this machine with Prefect's basic auth. Requests without the credential are refused,
on the REST API and on its websockets; the stack's own clients (pool creation, deployment, the
automation, the workers and the flow runs they start) authenticate, so a run completes."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from stacks import api_call, basic, deployment, stack_up, wait_final
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.slow


def _reachable_address() -> str | None:
    """An IPv4 address of this machine other than loopback (what another machine would call)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates += subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=10
        ).stdout.split()
    with contextlib.suppress(OSError):
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    for candidate in candidates:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(candidate)
            if address.version == 4 and not (address.is_loopback or address.is_link_local):
                with socket.socket() as s, contextlib.suppress(OSError):
                    s.bind((candidate, 0))
                    return candidate
    return None


ADDRESS = _reachable_address()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    if ADDRESS is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve on")
    auth = f"gdl-{secrets.token_hex(4)}:{secrets.token_urlsafe(16)}"
    with stack_up(tmp_path_factory.mktemp("remote"), ADDRESS, PREFECT_SERVER_API_AUTH_STRING=auth) as running:
        yield {**running, "auth": auth}


def _status(url: str, body: dict | None = None, authorization: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_api_refuses_requests_without_the_credential(remote):
    api, auth = remote["api"], remote["auth"]
    assert ADDRESS in api and not ipaddress.ip_address(ADDRESS).is_loopback
    user = auth.split(":")[0]
    for path, body in (("/flow_runs/filter", {}), ("/deployments/name/technique/text_lstm-demo", None)):
        assert _status(api + path, body) == 401, path
        assert _status(api + path, body, basic(f"{user}:wrong")) == 401, path
        assert _status(api + path, body, "Bearer " + auth) == 401, path
        assert _status(api + path, body, basic(auth)) == 200, path
    # What the stack made through its own clients exists: they authenticated.
    assert deployment(api, "technique", "text_lstm-demo", auth=auth)["work_pool_name"] == "cpu"
    assert api_call(api, "/work_pools/gpu", auth=auth)["concurrency_limit"] >= 1
    automations = api_call(api, "/automations/filter", {}, auth=auth)
    assert any(a["name"].startswith("gdl: crash flow runs") for a in automations)


def test_an_authenticated_worker_runs_a_deployment_to_completed(remote):
    api, auth = remote["api"], remote["auth"]
    found = deployment(api, "technique", "text_lstm-demo", auth=auth)
    run = api_call(api, f"/deployments/{found['id']}/create_flow_run", {}, auth=auth)
    final = wait_final(api, run["id"], auth=auth)
    assert final["state"]["type"] == "COMPLETED", final["state"]
    assert list((remote["repo"] / "data" / "runs" / "text_lstm").glob("*/report.html"))
    # The credential is in no line the stack printed and in none of its logs.
    password = auth.split(":", 1)[1]
    assert password not in "".join(remote["lines"])
    assert "basic auth required" in "".join(remote["lines"])
    for log in (remote["repo"] / ".prefect" / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log.name


def _event(name: str) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": name,
            "resource": {"prefect.resource.id": "gdl.test"},
        }
    )


def _closed_code(url: str, *messages: str) -> int:
    """Open a websocket with the `prefect` subprotocol, send `messages`, and return the close code
    the server answers with (the test fails if the socket stays open or answers anything)."""
    with connect(url, subprotocols=["prefect"], open_timeout=15) as ws:
        try:
            for message in messages:
                ws.send(message)
            answer = ws.recv(timeout=15)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else -1
        raise AssertionError(f"{url} answered {answer[:200]!r} without the credential")


@pytest.mark.parametrize("path", ["/events/in", "/events/out", "/logs/out"])
def test_the_websockets_refuse_clients_without_the_credential(remote, path):
    """Prefect 3.2 was reported to accept events over the websocket without auth (PrefectHQ/prefect
    #17687). On the pinned 3.8.8 the server refuses: the handshake without the `prefect`
    subprotocol (HTTP 403), and the socket is closed with 1008 (policy violation) when the first
    message is not an auth message with the right token. An event sent without the credential
    is not stored; one sent with it is."""
    api, auth = remote["api"], remote["auth"]
    url = api.replace("http://", "ws://", 1) + path
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=15).close()
    assert refused.value.response.status_code == 403
    tag = f"gdl.test.{uuid.uuid4().hex[:8]}"
    user = auth.split(":")[0]
    attempts = (
        (_event(f"{tag}.no-auth-message"),),
        (json.dumps({"type": "auth"}), _event(f"{tag}.no-token")),
        (json.dumps({"type": "auth", "token": f"{user}:wrong"}), _event(f"{tag}.wrong-token")),
    )
    for messages in attempts:
        assert _closed_code(url, *messages) == 1008, messages[0]
    if path != "/events/in":
        return
    # With the credential the same socket takes an event, which then shows among the events.
    with connect(url, subprotocols=["prefect"], open_timeout=15) as ws:
        ws.send(json.dumps({"type": "auth", "token": auth}))
        assert json.loads(ws.recv(timeout=15)) == {"type": "auth_success"}
        ws.send(_event(f"{tag}.authenticated"))
    query = {"filter": {"event": {"prefix": [tag]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}}
    deadline, names = time.monotonic() + 60, []
    while time.monotonic() < deadline and not names:
        names = [e["event"] for e in api_call(api, "/events/filter", query, auth=auth)["events"]]
        time.sleep(0.5)
    assert names == [f"{tag}.authenticated"]
