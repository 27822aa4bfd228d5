"""`gdl run` on its temporary Prefect server, stopped by Ctrl-C or SIGTERM mid-training (issue 7
item 10): it stops within seconds, in a few lines, and takes its server down with it. The
temporary server keeps its database apart from the stack's (item 11)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, cli_env, write_params

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _run_and_stop(root: Path, sig: int, outcome: dict) -> None:
    env = cli_env(root)  # no PREFECT_API_URL: gdl starts its temporary server
    proc = subprocess.Popen(
        [str(BIN / "gdl"), "run", "text_lstm", "--set", "text_lstm.epochs=200"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 400
    for line in proc.stderr:  # wait until training runs
        lines.append(line)
        if "Task run 'train-" in line or time.monotonic() > deadline:
            break
    children = _descendants(proc.pid)
    sent = time.monotonic()
    proc.send_signal(sig)
    lines += proc.stderr.read().splitlines(keepends=True)
    proc.wait(timeout=60)
    outcome.update(
        rc=proc.returncode,
        seconds=time.monotonic() - sent,
        stderr="".join(lines),
        children=children,
        left=[pid for pid in children if _alive(pid)],
        databases=sorted(p.relative_to(root).as_posix() for p in (root / ".prefect").rglob("*.db")),
    )


def test_ctrl_c_and_sigterm_stop_a_run_and_its_temporary_server_within_seconds(tmp_path):
    outcomes: dict[int, dict] = {signal.SIGINT: {}, signal.SIGTERM: {}}
    threads = []
    for sig, outcome in outcomes.items():
        root = tmp_path / sig.name
        root.mkdir()
        write_params(root)
        threads.append(threading.Thread(target=_run_and_stop, args=(root, sig, outcome)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    for sig, (rc, word) in {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}.items():
        got = outcomes[sig]
        assert "Task run 'train-" in got["stderr"], got["stderr"][-2000:]
        assert got["rc"] == rc, got["stderr"][-2000:]
        assert f"gdl: {word}" in got["stderr"] and "Traceback" not in got["stderr"]
        assert got["seconds"] < 30, got["stderr"][-2000:]
        assert got["children"] and got["left"] == []  # the temporary server went with it
        # Issue 7 item 11: the temporary server's database is its own, never the one of the
        # project's stack (.prefect/prefect.db), whose automations it used to evaluate.
        assert got["databases"] == [".prefect/temporary/prefect.db"]
