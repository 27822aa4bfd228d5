"""The `gdl` command line: list techniques, run their Prefect flows, run one DVC stage."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from pathlib import Path

from models.core.errors import GdlError
from models.core.files import s3_endpoint
from models.core.params import PROFILES, STEPS

# What TensorFlow's native code prints on every CPU run (it probes for CUDA; its logging starts
# before TF_CPP_MIN_LOG_LEVEL is read): dropped from the console, nothing else is.
NATIVE_NOISE = re.compile(
    rb"cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|cuda_(blas|dnn|fft)\.cc"
    rb"|All log messages before absl::InitializeLog|oneDNN custom operations are on"
    rb"|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler flags"
    rb"|computation_placer\.cc|TF-TRT Warning|Unable to register cu(DNN|FFT|BLAS) factory"
)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _quiet_native_stderr() -> None:
    """Filter the process's stderr (file descriptor 2, which native code writes to directly, and
    which child processes inherit) through a thread that drops the NATIVE_NOISE lines."""
    import atexit
    import threading

    try:
        console = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        return
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with open(read_end, "rb", buffering=0) as source:
            while chunk := source.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not NATIVE_NOISE.search(line))
                with contextlib.suppress(OSError):
                    _write_all(console, kept)
        if pending and not NATIVE_NOISE.search(pending):
            with contextlib.suppress(OSError):
                _write_all(console, pending)

    thread = threading.Thread(target=pump, name="gdl-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(console, 2)  # closes this process's end of the pipe: the pump drains and stops
        thread.join(timeout=2)

    atexit.register(restore)


def _environment(root: Path) -> None:
    """Quiet, offline, per-checkout defaults; set before TensorFlow or Prefect is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(root / ".prefect" / "storage"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _temporary_server_database() -> None:
    """Without PREFECT_API_URL, `gdl run` starts a temporary server: it gets a database of its
    own. The project's (.prefect/prefect.db) belongs to `gdl stack up`, whose automations and
    locks a temporary server must not share. Results and caches (PREFECT_LOCAL_STORAGE_PATH)
    stay shared, so a run on either server reuses the other's steps."""
    if os.environ.get("PREFECT_API_URL"):
        return
    temporary = Path(os.environ["PREFECT_HOME"]) / "temporary"
    temporary.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(
        "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{temporary / 'prefect.db'}"
    )


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (they go to the run's log file, the
    Prefect UI and, with --verbose, the console): a failed step reads as its one-line error."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _RunLog(logging.FileHandler):
    """Everything the run logs, tracebacks included, in a file; remembers whether it got one."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.traceback = False

    def emit(self, record: logging.LogRecord) -> None:
        self.traceback = self.traceback or bool(record.exc_info)
        super().emit(record)


RUN_LOGS_KEPT = 50


def _run_logging(verbose: bool) -> _RunLog:
    """Console: one line per event (tracebacks only with --verbose); a log file per run keeps
    them all (the newest RUN_LOGS_KEPT are kept)."""
    import time

    folder = Path(os.environ["PREFECT_HOME"]) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("gdl-run-*.log"))[:-RUN_LOGS_KEPT]:
        old.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_log = _RunLog(folder / f"gdl-run-{stamp}-{os.getpid()}.log")
    root = logging.getLogger()
    if not verbose:
        for handler in root.handlers:
            handler.setFormatter(_WithoutTraceback(handler.formatter))
    root.addHandler(run_log)
    return run_log


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: Prefect marks the run crashed, the temporary server stops."""


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM stop a run: the handler raises KeyboardInterrupt (Terminated
    for SIGTERM), and Prefect marks the run crashed and the temporary server stops.

    Such an exception can be lost: once in CI, a run went on training to the end after its one
    SIGINT. (A likely way: Prefect runs some callbacks in the waiting main thread inside `except
    BaseException`, its concurrency `Call`s, and keeps what they raise in a future nobody reads.)
    So after a signal, until `main` is done with the command (`finish()`), it is delivered again
    every `period` seconds.
    """

    def __init__(self, period: float = 10.0):
        import threading

        self.period = period
        self.done = threading.Event()
        self.reminder: threading.Thread | None = None

    def install(self) -> None:
        import signal
        import threading

        self.done, self.reminder = threading.Event(), None
        # Prefect's engine swaps in its own SIGTERM handler during a flow and calls this one after
        # marking the run: without it, the default action kills gdl and orphans the temporary server.
        signal.signal(signal.SIGTERM, self.handler)
        signal.signal(signal.SIGINT, self.handler)

    def handler(self, signum, frame):
        import signal
        import threading

        if self.reminder is None and not self.done.is_set():
            self.reminder = threading.Thread(target=self._remind, args=(signum, self.done), daemon=True)
            self.reminder.start()
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def _remind(self, signum: int, done) -> None:
        import _thread

        while not done.wait(self.period):
            _thread.interrupt_main(signum)

    def finish(self) -> None:
        self.done.set()


STOP = StopSignals()


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def cmd_list(args) -> None:
    from models.core.registry import techniques

    for name, t in techniques().items():
        print(f"{name}\t{', '.join(t.dataset_names)}\t{t.summary}")


def cmd_run(args) -> None:
    from flows.config import check_all, overrides_from_cli, resolve_params
    from tasks.steps import project_root

    overrides = overrides_from_cli(args.set or [])
    # Reject bad input before any work (and before a Prefect server is started).
    if args.technique == "all":
        check_all(args.profile, overrides)
    else:
        resolve_params(args.technique, args.profile, overrides)
    _temporary_server_database()  # before Prefect reads its settings
    from flows.pipeline import nightly_flow, technique_flow

    root = project_root()
    profile = args.profile or _profile_default()
    run_log = _run_logging(args.verbose)
    STOP.install()
    try:
        _run_flow(args, root, profile, overrides, nightly_flow, technique_flow)
    except GdlError as exc:
        if run_log.traceback and not args.verbose:
            where = _shown(Path(run_log.baseFilename))
            raise GdlError(f"{exc} (traceback in {where}; --verbose prints it)") from None
        raise


def _run_flow(args, root: Path, profile: str, overrides, nightly_flow, technique_flow) -> None:
    if args.technique == "all":
        results = nightly_flow(profile, overrides)
        for name, result in results.items():
            print(f"{name}: {_shown(root / result['report'])}")
        print(_shown(root / next(iter(results.values()))["gallery"]))
    else:
        result = technique_flow(args.technique, profile, overrides)
        print(f"report: {_shown(root / result['report'])}")
        print(f"published: {result['published']}")
        print(_shown(root / result["run_dir"]))


def _profile_default() -> str:
    from flows.config import params_path
    from models.core.params import active_profile, read_params_file

    return active_profile(read_params_file(params_path()), None)


def cmd_stage(args) -> None:
    import importlib

    from flows.config import resolve_params
    from tasks.steps import dvc_upstream

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = resolve_params(args.technique, None, None)
    if args.step == "download":
        _check_dvc_tracks_inputs(args.technique, params)
    module = importlib.import_module(f"tasks.{args.step}")
    result = module.run(args.technique, params, dvc_upstream(args.technique, args.step), dvc=True)
    print(
        result.get("run_dir") or result.get("dir") or ", ".join(e["dir"] for e in result["inputs"].values())
    )


def _check_dvc_tracks_inputs(technique: str, params: dict) -> None:
    """DVC re-runs a download when a catalog entry it declares changes; an entry params.yaml
    selects but dvc.yaml does not declare would go unnoticed: refuse, saying how to fix it."""
    import yaml

    from models.core.registry import get
    from tasks.steps import project_root

    dvc_yaml = project_root() / "dvc.yaml"
    if not dvc_yaml.exists():
        return
    stage = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(f"{technique}-download", {})
    declared = {d for p in stage.get("params", []) if isinstance(p, dict) for ds in p.values() for d in ds}
    t = get(technique)
    used = {d for d, _ in t.active_inputs(t.params_model(**params)).values()}
    missing = sorted(used - declared)
    if missing:
        raise GdlError(
            f"params.yaml selects catalog entr{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)} "
            f"for {technique}, which dvc.yaml does not track: run `gdl dvc-yaml --write` first"
        )


def cmd_params(args) -> None:
    from flows.config import params_path, render_params, render_params_reference

    if args.reference:
        reference = render_params_reference()
        if not args.write:
            sys.stdout.write(reference)
            return
        readme = params_path().parent / "README.md"
        start, end = "<!-- params-reference:start -->\n", "<!-- params-reference:end -->"
        text = readme.read_text()
        if text.count(start) != 1 or end not in text.split(start)[1]:
            raise GdlError(f"{readme} needs one '{start.strip()}' ... '{end}' block")
        head, rest = text.split(start)
        readme.write_text(head + start + reference + end + rest.split(end, 1)[1])
        print(f"wrote the parameter reference into {readme}")
        return
    text = render_params()
    _emit(text, params_path(), args.write)


def _emit(text: str, path: Path, write: bool) -> None:
    """Print a generated file, or (with --write) write it in place."""
    if write:
        path.write_text(text)
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)


def cmd_dvc_yaml(args) -> None:
    from flows.dvcfile import render
    from tasks.steps import project_root

    _emit(render(project_root()), project_root() / "dvc.yaml", args.write)


def cmd_prefect_yaml(args) -> None:
    from flows.deployments import render
    from tasks.steps import project_root

    _emit(render(args.cron, args.timezone), project_root() / "prefect.yaml", args.write)


def cmd_dvc_remote(args) -> None:
    """Point DVC at an S3 remote, machine-locally (.dvc/config.local: endpoints stay out of git)."""
    import subprocess

    url = args.url or os.environ.get("GDL_DVC_REMOTE")
    if not url or not url.startswith("s3://"):
        raise GdlError("give --url s3://bucket/prefix (or set GDL_DVC_REMOTE) for the DVC remote")
    dvc = str(Path(sys.executable).parent / "dvc")
    commands = [[dvc, "remote", "add", "--local", "--force", "--default", "gdl", url]]
    endpoint = s3_endpoint()
    if endpoint:
        commands.append([dvc, "remote", "modify", "--local", "gdl", "endpointurl", endpoint])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise GdlError(f"{' '.join(command[1:])} failed: {result.stderr.strip()}")
    print(f"DVC remote 'gdl' (default) -> {url}" + (f" via {endpoint}" if endpoint else ""))


def cmd_stack(args) -> None:
    from flows.stack import up
    from tasks.steps import project_root

    sys.exit(up(project_root(), args.host, args.port, args.db, args.gpus, not args.no_deploy))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdl", description="Generative deep-learning pipelines (Prefect flows, DVC stages)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="techniques and their datasets, name first").set_defaults(fn=cmd_list)
    run = sub.add_parser("run", help="run a technique's Prefect flow ('all': the nightly flow)")
    run.add_argument("technique", help="technique name, or 'all'")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="print tracebacks (always kept in the run's log file)"
    )
    run.add_argument("--profile", choices=PROFILES, help="parameter profile (default: params.yaml)")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set text_lstm.epochs=3 (repeatable)",
    )
    run.set_defaults(fn=cmd_run)
    stage = sub.add_parser("stage", help="run one step into its DVC slot (what dvc.yaml calls)")
    stage.add_argument("technique")
    stage.add_argument("step", choices=STEPS)
    stage.set_defaults(fn=cmd_stage)
    params = sub.add_parser("params", help="print (or --write) params.yaml from the models")
    params.add_argument("--write", action="store_true")
    params.add_argument(
        "--reference", action="store_true", help="print the Markdown parameter reference (as in README.md)"
    )
    params.set_defaults(fn=cmd_params)
    dvc = sub.add_parser("dvc-yaml", help="print (or --write) dvc.yaml from the registry")
    dvc.add_argument("--write", action="store_true")
    dvc.set_defaults(fn=cmd_dvc_yaml)
    deploy = sub.add_parser("prefect-yaml", help="print (or --write) prefect.yaml from the registry")
    deploy.add_argument("--write", action="store_true")
    deploy.add_argument("--cron", default="0 2 * * *", help="nightly schedule (default 02:00)")
    deploy.add_argument("--timezone", default="UTC", help="time zone of the schedule")
    deploy.set_defaults(fn=cmd_prefect_yaml)
    remote = sub.add_parser("dvc-remote", help="use an S3 bucket as this checkout's DVC remote")
    remote.add_argument("--url", help="s3://bucket/prefix (default: $GDL_DVC_REMOTE)")
    remote.set_defaults(fn=cmd_dvc_remote)
    stack = sub.add_parser("stack", help="the local stack: Prefect server, pools, deployments, workers")
    stack.add_argument("action", choices=["up"])
    stack.add_argument("--host", default="127.0.0.1")
    stack.add_argument("--port", type=int, default=4200)
    stack.add_argument("--db", help="database URL (default: SQLite in .prefect/)")
    stack.add_argument("--gpus", type=int, help="concurrent runs of the gpu pool (default: GPUs)")
    stack.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    stack.set_defaults(fn=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tasks.steps import project_root

    _environment(project_root())
    if argv is None and os.environ.get("GDL_NATIVE_LOGS", "") in ("", "0"):  # the program, not a test's call
        _quiet_native_stderr()
    try:
        args.fn(args)
    except GdlError as exc:
        print(f"gdl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"gdl: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        STOP.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
