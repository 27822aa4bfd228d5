"""The `gdl` command line: list techniques, run their Prefect flows, run one DVC stage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flows.process import STOP, Terminated, quiet_native_stderr, run_logging
from models.core.errors import BudgetReached, GdlError
from models.core.params import PROFILES, STEPS
from models.core.settings import settings


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


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def cmd_list(args) -> None:
    from models.core.registry import techniques

    for name, t in techniques().items():
        # Third column: whether the technique trains data-parallel (its `replicas` param).
        parallel = "replicas" if t.supports_replicas else "-"
        print(f"{name}\t{', '.join(t.dataset_names)}\t{parallel}\t{t.summary}")


def cmd_run(args) -> int:
    from flows.config import check_all, overrides_from_cli, resolve_params
    from tasks.steps import project_root

    overrides = overrides_from_cli(args.set or [], args.technique)
    # Reject bad input before any work (and before a Prefect server is started).
    if args.technique == "all":
        check_all(args.profile, overrides, args.rehearse)
    else:
        resolve_params(args.technique, args.profile, overrides, args.rehearse)
    _temporary_server_database()  # before Prefect reads its settings
    from flows.pipeline import nightly_flow, technique_flow

    root = project_root()
    profile = args.profile or _profile_default()
    run_log = run_logging(args.verbose)
    STOP.install()
    try:
        return _run_flow(args, root, profile, overrides, nightly_flow, technique_flow)
    except GdlError as exc:
        if run_log.traceback and not args.verbose:
            where = _shown(Path(run_log.baseFilename))
            raise GdlError(f"{exc} (traceback in {where}; --verbose prints it)") from None
        raise


# Exit status of a run that stopped at its time budget (max_train_minutes): sysexits' EX_TEMPFAIL,
# "try again later": the next run resumes it. Not 0 (nothing was published), not an error (2).
EXIT_INCOMPLETE = 75


def _incomplete(result) -> str | None:
    """`<technique>: stopped at its budget ...` for a run that stopped at its budget, else None."""
    if not (isinstance(result, dict) and "incomplete" in result):
        return None
    return f"{result['technique']}: {BudgetReached.from_summary(result['incomplete'])}"


def _run_flow(args, root: Path, profile: str, overrides, nightly_flow, technique_flow) -> int:
    if args.rehearse:
        from flows.rehearsal import render_table

        if args.technique == "all":
            from flows.rehearsal import LAST_RUN

            state = nightly_flow(profile, overrides, rehearse=True, return_state=True)
            print(render_table(LAST_RUN["rows"], LAST_RUN["failed"]), end="")
            state.result()  # raises (one line) when a technique failed
        else:
            print(render_table([technique_flow(args.technique, profile, overrides, rehearse=True)]), end="")
        print(f"rehearsal of the {profile} profile: nothing was published")
        return 0
    again = ": run the same command again to resume"
    if args.technique == "all":
        results = nightly_flow(profile, overrides)
        for name, result in results.items():
            stopped = _incomplete(result)
            print(stopped + again if stopped else f"{name}: {_shown(root / result['report'])}")
        published = [r for r in results.values() if not _incomplete(r)]
        if published:
            print(_shown(root / published[0]["gallery"]))
        return EXIT_INCOMPLETE if len(published) < len(results) else 0
    result = technique_flow(args.technique, profile, overrides)
    stopped = _incomplete(result)
    if stopped:
        print(stopped + again)
        return EXIT_INCOMPLETE
    print(f"report: {_shown(root / result['report'])}")
    print(f"published: {result['published']}")
    print(_shown(root / result["run_dir"]))
    return 0


def _profile_default() -> str:
    from flows.config import params_path
    from models.core.params import active_profile, read_params_file

    return active_profile(read_params_file(params_path()), None)


def cmd_stage(args) -> int | None:
    import importlib

    from flows.config import resolve_params
    from tasks.steps import dvc_upstream

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = resolve_params(args.technique, None, None)
    if args.step == "download":
        _check_dvc_tracks_inputs(args.technique, params)
    module = importlib.import_module(f"tasks.{args.step}")
    try:
        result = module.run(args.technique, params, dvc_upstream(args.technique, args.step), dvc=True)
    except BudgetReached as stop:  # dvc repro shows this line, then the stage as failed
        print(f"gdl: {args.technique}-{args.step} {stop}: run `dvc repro` again to resume", file=sys.stderr)
        return EXIT_INCOMPLETE
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


def cmd_quality(args) -> None:
    """Each technique's latest run against its floor; with --check, fail unless all pass."""
    from models.core.registry import known, techniques
    from models.reporting.gallery import local_runs
    from models.reporting.quality import EXPECTED_BELOW_FLOOR, quality_table
    from tasks.steps import data_dir

    runs_root = Path(args.runs) if args.runs else data_dir() / "runs"
    wanted = known(args.techniques) if args.techniques else sorted(techniques())
    rows = quality_table(local_runs(runs_root) if runs_root.is_dir() else {}, wanted)
    width = max(len(r["technique"]) for r in rows)
    for r in rows:
        print(f"{r['technique']:<{width}}  {r['verdict']:<22}  {r['sentence']}")
    failing = [r["technique"] for r in rows if r["verdict"] in ("below floor", "no record")]
    expected = [r["technique"] for r in rows if r["verdict"] == "below floor (expected)"]
    if expected:
        print("expected below floor: " + "; ".join(f"{t}: {EXPECTED_BELOW_FLOOR[t]}" for t in expected))
    if args.check and failing:
        raise GdlError(f"below the demo's floor or without a quality record: {', '.join(failing)}")


def cmd_params(args) -> None:
    from flows.config import params_path, render_params, render_params_reference

    if args.reference:
        _reference(render_params_reference(), "params-reference", "parameter reference", args.write)
    else:
        _emit(render_params(), params_path(), args.write)


def cmd_settings(args) -> None:
    from models.core.settings import render_current, render_reference

    if args.reference:
        _reference(render_reference(), "settings-reference", "settings reference", args.write)
    else:
        sys.stdout.write(render_current())


def _reference(reference: str, marker: str, what: str, write: bool) -> None:
    """Print a generated README block, or (with --write) replace the README's copy of it, the
    lines between `<!-- {marker}:start -->` and `<!-- {marker}:end -->`."""
    if not write:
        sys.stdout.write(reference)
        return
    from tasks.steps import project_root

    readme = project_root() / "README.md"
    start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
    text = readme.read_text()
    if text.count(start) != 1 or end not in text.split(start)[1]:
        raise GdlError(f"{readme} needs one '{start.strip()}' ... '{end}' block")
    head, rest = text.split(start)
    readme.write_text(head + start + reference + end + rest.split(end, 1)[1])
    print(f"wrote the {what} into {readme}")


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

    url = args.url or settings().dvc_remote
    if not url or not url.startswith("s3://"):
        raise GdlError("give --url s3://bucket/prefix (or set GDL_DVC_REMOTE) for the DVC remote")
    dvc = str(Path(sys.executable).parent / "dvc")
    commands = [[dvc, "remote", "add", "--local", "--force", "--default", "gdl", url]]
    endpoint = settings().s3_endpoint_url
    if endpoint:
        commands.append([dvc, "remote", "modify", "--local", "gdl", "endpointurl", endpoint])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise GdlError(f"{' '.join(command[1:])} failed: {result.stderr.strip()}")
    print(f"DVC remote 'gdl' (default) -> {url}" + (f" via {endpoint}" if endpoint else ""))


def cmd_stack(args) -> None:
    from flows.stack import parse_gpus, up
    from tasks.steps import project_root

    gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    sys.exit(up(project_root(), args.host, args.port, args.db, gpus, not args.no_deploy, args.cpu_workers))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdl", description="Generative deep-learning pipelines (Prefect flows, DVC stages)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "list", help="techniques, their datasets and whether they train on replicas, name first"
    ).set_defaults(fn=cmd_list)
    run = sub.add_parser("run", help="run a technique's Prefect flow ('all': the nightly flow)")
    run.add_argument("technique", help="technique name, or 'all'")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="print tracebacks (always kept in the run's log file)"
    )
    run.add_argument("--profile", choices=PROFILES, help="parameter profile (default: params.yaml)")
    run.add_argument(
        "--rehearse",
        action="store_true",
        help="the profile's real data, shapes and networks with counts capped: a table of what was "
        "found and the projected time of the real run; nothing is published",
    )
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
    env = sub.add_parser("settings", help="print the GDL_* settings the environment gives")
    env.add_argument(
        "--reference", action="store_true", help="print the Markdown table of every setting (as in README.md)"
    )
    env.add_argument("--write", action="store_true", help="with --reference: write it into README.md")
    env.set_defaults(fn=cmd_settings)
    quality = sub.add_parser("quality", help="each technique's latest run against its quality floor")
    quality.add_argument("techniques", nargs="*", help="only these (default: every technique)")
    quality.add_argument("--check", action="store_true", help="exit non-zero when any is below its floor")
    quality.add_argument("--runs", help="the runs folder (default: data/runs of the project)")
    quality.set_defaults(fn=cmd_quality)
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
    stack.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the server listens on (default 127.0.0.1); any but loopback needs "
        "PREFECT_SERVER_API_AUTH_STRING=user:password in the environment",
    )
    stack.add_argument("--port", type=int, default=4200)
    stack.add_argument("--db", help="database URL (default: SQLite in .prefect/)")
    stack.add_argument(
        "--gpus",
        help="GPU ids, comma-separated (0,1,3): one gpu-pool worker pinned to each, one run per GPU "
        "(default: the GPUs nvidia-smi lists; none: one unpinned worker)",
    )
    stack.add_argument(
        "--cpu-workers", type=int, default=1, help="cpu-pool workers, one run each (default 1)"
    )
    stack.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    stack.set_defaults(fn=cmd_stack)
    return parser


def _reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (`gdl list | head -1`), as opposed to a
    broken socket somewhere in the work, which stays an error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush finds nothing to complain of."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tasks.steps import project_root

        _environment(project_root())
        if argv is None and not settings().native_logs:  # the program, not a test's call
            quiet_native_stderr()
        code = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        if not _reader_gone():
            raise
        _quiet_stdout()
        return 141  # as git and ls end when their reader goes (128 + SIGPIPE)
    except GdlError as exc:
        from models.inputs.catalog import redact_text  # a safety net: messages redact their own

        print(f"gdl: error: {redact_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"gdl: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        STOP.finish()
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
