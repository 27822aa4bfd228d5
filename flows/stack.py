"""`gdl stack up`: the local stack — a Prefect server, the work pools, the deployments of
prefect.yaml, and one process worker per pool — in the foreground until Ctrl-C, then a clean
shutdown (workers first, then the server).

SQLite under .prefect/ by default; `--db postgresql+asyncpg://user:pass@host/db` for a server
that several workers hammer (SQLite reports "database is locked" under concurrency).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.deployments import CPU_POOL, GPU_POOL
from models.core.errors import GdlError
from models.core.settings import settings


def _prefect() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else "prefect"


def gpu_count() -> int:
    """GPUs on this machine (nvidia-smi), at least 1 so the gpu pool always admits a run."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if out.returncode == 0:
            return max(1, sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")))
    return 1


def stack_env(root: Path, host: str, port: int, db_url: str | None) -> dict[str, str]:
    api = f"http://{host}:{port}/api"
    env = dict(os.environ)
    env.update(
        GDL_ROOT=str(root),
        PREFECT_HOME=env.get("PREFECT_HOME", str(root / ".prefect")),
        PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api,  # the UI calls the API here, whatever --port says
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(heartbeat_seconds()),
        DO_NOT_TRACK="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    else:
        # SQLite serialises writers: give a busy database time instead of answering 503.
        env.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
        env.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT", "60")
    return env


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GdlError(f"the Prefect server exited with code {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise GdlError(f"the Prefect server did not answer {url} within {timeout:.0f} s")


# Flow runs send a heartbeat every GDL_HEARTBEAT_SECONDS (default 30, also Prefect's own lower
# bound: its server refuses to start below it, so the setting refuses it too); a run whose
# heartbeats stop (its machine or worker was killed) is marked Crashed after three missed ones by
# this automation, so it never stays "Running" forever.


def heartbeat_seconds() -> int:
    return settings().heartbeat_seconds


ZOMBIE_PREFIX = "gdl: crash flow runs whose heartbeats stopped for"


def zombie_automation(heartbeat: int) -> dict:
    return {
        "name": f"{ZOMBIE_PREFIX} {3 * heartbeat} s",
        "description": "Created by `gdl stack up`.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            ],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": 3 * heartbeat,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"No heartbeat for {3 * heartbeat} s: the worker or its machine is gone.",
            }
        ],
    }


def _ensure_zombie_automation(api: str) -> None:
    def call(path: str, body: dict) -> object:
        req = urllib.request.Request(
            api + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    try:
        existing = call("/automations/filter", {})
        automation = zombie_automation(heartbeat_seconds())
        # One of ours for another heartbeat would crash healthy runs: replace it.
        for old in existing:
            if old["name"].startswith(ZOMBIE_PREFIX) and old["name"] != automation["name"]:
                req = urllib.request.Request(f"{api}/automations/{old['id']}", method="DELETE")
                urllib.request.urlopen(req, timeout=30).close()
        if not any(a["name"] == automation["name"] for a in existing):
            call("/automations/", automation)
    except OSError as exc:  # HTTPError and URLError are OSErrors
        raise GdlError(f"could not create the crashed-run automation on {api}: {exc}") from None


def _stop(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def up(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    db_url: str | None = None,
    gpus: int | None = None,
    deploy: bool = True,
) -> int:
    env = stack_env(root, host, port, db_url)
    logs = Path(env["PREFECT_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect = _prefect()
    started: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        proc = subprocess.Popen(
            [prefect, *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(proc)
        return proc

    def run(*args: str) -> None:
        result = subprocess.run([prefect, *args], cwd=root, env=env, capture_output=True, text=True)
        if result.returncode:
            raise GdlError(f"`prefect {' '.join(args)}` failed: {result.stdout[-500:]}{result.stderr[-500:]}")

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = spawn("server", "server", "start", "--host", host, "--port", str(port))
        _wait_healthy(env["PREFECT_API_URL"] + "/health", server, timeout=180)
        print(f"Prefect server: http://{host}:{port} (log: {logs / 'server.log'})", flush=True)
        _ensure_zombie_automation(env["PREFECT_API_URL"])
        for pool in (CPU_POOL, GPU_POOL):
            run("work-pool", "create", pool, "--type", "process", "--overwrite")
        limit = gpus or gpu_count()
        run("work-pool", "set-concurrency-limit", GPU_POOL, str(limit))
        print(f"work pools: {CPU_POOL}, {GPU_POOL} (one run per GPU: limit {limit})", flush=True)
        if deploy:
            run("--no-prompt", "deploy", "--all")
            print("deployed every deployment of prefect.yaml", flush=True)
        workers = {
            pool: spawn(f"worker-{pool}", "worker", "start", "--pool", pool) for pool in (CPU_POOL, GPU_POOL)
        }
        print(f"workers: {CPU_POOL}, {GPU_POOL} (logs in {logs}); Ctrl-C stops the stack", flush=True)
        print("stack ready", flush=True)
        restarts: list[float] = []
        while not stopping:
            if server.poll() is not None:
                print(
                    f"the Prefect server exited (code {server.returncode}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            for pool, worker in workers.items():
                if worker.poll() is None:
                    continue
                # A worker that died (killed, out of memory) is restarted, within reason.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 600] + [now]
                if len(restarts) > 5:
                    print("workers keep dying; stopping", file=sys.stderr, flush=True)
                    return 1
                print(f"worker {pool} exited (code {worker.returncode}); restarting", flush=True)
                workers[pool] = spawn(f"worker-{pool}", "worker", "start", "--pool", pool)
            time.sleep(0.5)
        return 0
    finally:
        print("stopping workers and server", flush=True)
        _stop(started[1:])  # workers first, so their runs are reported
        _stop(started[:1])
        print("stack stopped", flush=True)
