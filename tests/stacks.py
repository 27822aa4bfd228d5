"""Helpers of the tests that start `gdl stack up` (test_stack_e2e, test_stack_auth_e2e): the
stack in a scratch copy of the project, and REST calls to its API, with or without basic auth."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import BIN, REPO, cli_env, free_port, write_params


def basic(auth: str) -> str:
    """The Authorization header's value for `user:password`."""
    return "Basic " + base64.b64encode(auth.encode()).decode()


def api_call(api: str, path: str, body: dict | None = None, auth: str | None = None):
    """One REST call; a 503 (the server's "busy, retry") is retried, as Prefect's own client does."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = basic(auth)
    for attempt in range(6):
        req = urllib.request.Request(api + path, data=data, method="POST" if data else "GET", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 5:
                raise
            time.sleep(2**attempt)


def deployment(api: str, flow: str, name: str, auth: str | None = None) -> dict:
    return api_call(api, f"/deployments/name/{flow}/{name}", auth=auth)


def wait_final(api: str, run_id: str, timeout: float = 420, auth: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api_call(api, f"/flow_runs/{run_id}", auth=auth)
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} still {run['state']['type']} after {timeout} s")


@contextlib.contextmanager
def stack_up(base: Path, host: str = "127.0.0.1", args: tuple[str, ...] = (), **env: str) -> Iterator[dict]:
    """`gdl stack up --host HOST [args]` in a scratch copy of the project under `base`, with tiny
    params and `env` added to the test environment; stopped (and checked to stop cleanly) at the end."""
    repo = base / "repo"
    repo.mkdir()
    for name in ("models", "tasks", "flows"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", repo / "prefect.yaml")
    write_params(repo)
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "gdl"), "stack", "up", "--host", host, "--port", str(port), *args],
        cwd=repo,
        env=cli_env(repo, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="2", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "stack ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 240
    while not ready.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
        pass  # a stack that exits early fails the fixture at once, not after the deadline
    if not ready.is_set():
        proc.kill()
        raise AssertionError("stack did not come up:\n" + "".join(lines))
    address = f"[{host}]" if ":" in host else host
    yield {
        "repo": repo,
        "api": f"http://{address}:{port}/api",
        "ui": f"http://{address}:{port}",
        "proc": proc,
        "lines": lines,
    }
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0, "".join(lines)
    assert "stack stopped" in "".join(lines)
