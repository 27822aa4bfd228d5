"""`gdl stack up`: the local stack — a Prefect server, the work pools, the deployments of
prefect.yaml, and process workers (one per GPU, pinned to it with CUDA_VISIBLE_DEVICES;
`--cpu-workers` on the cpu pool; one for the nightlies' own pool) — in the foreground until
Ctrl-C, then a clean shutdown (workers first, then the server).

SQLite under .prefect/ by default; `--db postgresql+asyncpg://user:pass@host/db` for a server
that several workers hammer (SQLite reports "database is locked" under concurrency).

A server other machines can reach (`--host` anything but loopback) lets whoever reaches it start,
cancel and delete runs, so it starts only with Prefect's basic auth: `PREFECT_SERVER_API_AUTH_STRING=
user:password` in the environment (never a command-line argument: those show in `ps`). Everything
the stack starts that calls the API gets it as `PREFECT_API_AUTH_STRING`; it is never printed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.deployments import CPU_POOL, GPU_POOL, NIGHTLY_POOL
from models.core.errors import GdlError
from models.core.settings import settings


def _prefect() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else "prefect"


def gpu_ids() -> list[str]:
    """The ids of this machine's GPUs (nvidia-smi -L), [] when it has none or no driver."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if out.returncode == 0:
            lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
            return [line.split()[1].rstrip(":") for line in lines]
    return []


def parse_gpus(text: str) -> list[str]:
    """`--gpus 0,1,3`: GPU ids as CUDA_VISIBLE_DEVICES takes them, each once."""
    ids = [part.strip() for part in text.split(",")]
    if not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise GdlError(f"--gpus {text!r}: expected distinct GPU ids separated by commas, e.g. --gpus 0,1")
    return ids


def workers_of(gpus: list[str], cpu_workers: int) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (pool, extra environment) of every worker the stack runs: one per GPU, pinned to
    it (none found: one unpinned), `cpu_workers` on the cpu pool, one for the nightlies."""
    workers: dict[str, tuple[str, dict[str, str]]] = {}
    for gpu in gpus:
        workers[f"worker-gpu{gpu}"] = (GPU_POOL, {"CUDA_VISIBLE_DEVICES": gpu})
    if not gpus:
        workers["worker-gpu"] = (GPU_POOL, {})
    for i in range(cpu_workers):
        workers["worker-cpu" if cpu_workers == 1 else f"worker-cpu{i + 1}"] = (CPU_POOL, {})
    workers["worker-nightly"] = (NIGHTLY_POOL, {})
    return workers


SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"  # what the server checks (server.api.auth_string)
CLIENT_AUTH = "PREFECT_API_AUTH_STRING"  # what clients send (api.auth_string)
REMOTE_README = "README: Workers on other machines"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; anything else (0.0.0.0, a LAN address, a host name) may
    be reachable from other machines."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_auth(host: str, environ: dict[str, str] | None = None) -> str | None:
    """The basic-auth string the server will require (`user:password`), from the environment;
    a one-line GdlError (without the value) when it is malformed, or missing on a host other
    machines can reach."""
    environ = os.environ if environ is None else environ
    auth = environ.get(SERVER_AUTH)
    if auth is None:
        if not is_loopback(host):
            raise GdlError(
                f"--host {host} lets other machines reach the Prefect server, and anyone who reaches it "
                f"could start, cancel or delete runs: set {SERVER_AUTH}=user:password in the environment "
                f"to require basic auth ({REMOTE_README}), or use --host 127.0.0.1"
            )
        return None
    user, colon, password = auth.partition(":")
    if not (user and colon and password) or any(c.isspace() or not c.isprintable() for c in auth):
        raise GdlError(
            f"{SERVER_AUTH} is not user:password (a non-empty user without ':', a non-empty password, "
            f"no spaces or control characters); its value is not shown"
        )
    return auth


def redact(text: str, auth: str | None) -> str:
    """`text` without the auth string or its basic-auth token."""
    if auth:
        for secret in (auth, base64.b64encode(auth.encode()).decode()):
            text = text.replace(secret, "***")
    return text


def _client_host(host: str) -> str:
    """Where processes on this machine reach a server listening on `host` (a URL's host part)."""
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::"):
        bare = "127.0.0.1" if bare == "0.0.0.0" else "::1"
    return f"[{bare}]" if ":" in bare else bare


def stack_env(
    root: Path, host: str, port: int, db_url: str | None, auth: str | None = None
) -> dict[str, str]:
    api = f"http://{_client_host(host)}:{port}/api"
    env = dict(os.environ)
    env.update(
        GDL_ROOT=str(root),
        PREFECT_HOME=env.get("PREFECT_HOME", str(root / ".prefect")),
        PREFECT_API_URL=api,
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(heartbeat_seconds()),
        DO_NOT_TRACK="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    # The UI calls the API here, whatever --port says; behind a TLS proxy, or listening on
    # 0.0.0.0, set PREFECT_UI_API_URL to the address browsers use.
    env.setdefault("PREFECT_UI_API_URL", api)
    if auth:
        env[SERVER_AUTH] = env[CLIENT_AUTH] = auth  # the server, and every client the stack starts
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    else:
        # SQLite serialises writers: give a busy database time instead of answering 503.
        env.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
        env.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT", "60")
    return env


def _headers(auth: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return headers


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, auth: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GdlError(f"the Prefect server exited with code {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=_headers(auth)), timeout=2):
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


def _ensure_zombie_automation(api: str, auth: str | None = None) -> None:
    def call(path: str, body: dict) -> object:
        req = urllib.request.Request(
            api + path, data=json.dumps(body).encode(), method="POST", headers=_headers(auth)
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    try:
        existing = call("/automations/filter", {})
        automation = zombie_automation(heartbeat_seconds())
        # One of ours for another heartbeat would crash healthy runs: replace it.
        for old in existing:
            if old["name"].startswith(ZOMBIE_PREFIX) and old["name"] != automation["name"]:
                req = urllib.request.Request(
                    f"{api}/automations/{old['id']}", method="DELETE", headers=_headers(auth)
                )
                urllib.request.urlopen(req, timeout=30).close()
        if not any(a["name"] == automation["name"] for a in existing):
            call("/automations/", automation)
    except OSError as exc:  # HTTPError and URLError are OSErrors
        raise GdlError(f"could not create the crashed-run automation on {api}: {exc}") from None


def _shared_results_block(env: dict[str, str]) -> str:
    """With GDL_SHARED_STORAGE, flow results go there too (not only task results), so a nightly
    reads the results of technique runs that workers on other machines ran: the storage block,
    created on the server, becomes every worker's default (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK)."""
    code = "from tasks.shared_storage import result_storage; print(result_storage())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode or not out.stdout.strip():
        raise GdlError(f"could not create the shared result storage block: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().splitlines()[-1]


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
    gpus: list[str] | None = None,
    deploy: bool = True,
    cpu_workers: int = 1,
) -> int:
    if cpu_workers < 1:
        raise GdlError(f"--cpu-workers must be at least 1 (got {cpu_workers})")
    auth = server_auth(host)  # before anything starts: a refused stack starts nothing
    gpus = gpu_ids() if gpus is None else gpus
    env = stack_env(root, host, port, db_url, auth)
    logs = Path(env["PREFECT_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect = _prefect()
    started: list[subprocess.Popen] = []

    def spawn(name: str, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        proc = subprocess.Popen(
            [prefect, *args],
            cwd=root,
            env={**env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    def run(*args: str) -> None:
        result = subprocess.run([prefect, *args], cwd=root, env=env, capture_output=True, text=True)
        if result.returncode:
            output = redact(result.stdout[-500:] + result.stderr[-500:], auth)
            raise GdlError(f"`prefect {' '.join(args)}` failed: {output}")

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = spawn("server", "server", "start", "--host", host, "--port", str(port))
        _wait_healthy(env["PREFECT_API_URL"] + "/health", server, timeout=180, auth=auth)
        print(f"Prefect server: http://{host}:{port} (log: {logs / 'server.log'})", flush=True)
        if auth:
            print(
                f"basic auth required ({SERVER_AUTH}); over plain HTTP the credential crosses the network "
                f"in clear: put a TLS proxy in front or keep it on a private network ({REMOTE_README})",
                flush=True,
            )
        _ensure_zombie_automation(env["PREFECT_API_URL"], auth)
        if settings().shared_storage:
            env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = _shared_results_block(env)
        for pool in (CPU_POOL, GPU_POOL, NIGHTLY_POOL):
            run("work-pool", "create", pool, "--type", "process", "--overwrite")
        limits = {GPU_POOL: max(1, len(gpus)), CPU_POOL: cpu_workers}
        for pool, limit in limits.items():
            run("work-pool", "set-concurrency-limit", pool, str(limit))
        print(
            f"work pools: {GPU_POOL} (one run per GPU: limit {limits[GPU_POOL]}), "
            f"{CPU_POOL} (limit {cpu_workers}), {NIGHTLY_POOL}",
            flush=True,
        )
        if deploy:
            run("--no-prompt", "deploy", "--all")
            print("deployed every deployment of prefect.yaml", flush=True)
        plan = workers_of(gpus, cpu_workers)

        def start_worker(name: str) -> subprocess.Popen:
            pool, extra = plan[name]
            # One flow run at a time per worker: a GPU worker's runs see only its GPU.
            return spawn(name, "worker", "start", "--pool", pool, "--limit", "1", extra=extra)

        workers = {name: start_worker(name) for name in plan}
        pinned = ", ".join(
            f"{n} (CUDA_VISIBLE_DEVICES={e['CUDA_VISIBLE_DEVICES']})" for n, (_, e) in plan.items() if e
        )
        print(f"workers: {', '.join(plan)} (logs in {logs}); Ctrl-C stops the stack", flush=True)
        if pinned:
            print(f"pinned: {pinned}", flush=True)
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
            for name, worker in workers.items():
                if worker.poll() is None:
                    continue
                # A worker that died (killed, out of memory) is restarted, within reason.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 600] + [now]
                if len(restarts) > 5:
                    print("workers keep dying; stopping", file=sys.stderr, flush=True)
                    return 1
                print(f"{name} exited (code {worker.returncode}); restarting", flush=True)
                workers[name] = start_worker(name)
            time.sleep(0.5)
        return 0
    finally:
        print("stopping workers and server", flush=True)
        _stop(started[1:])  # workers first, so their runs are reported
        _stop(started[:1])
        print("stack stopped", flush=True)
