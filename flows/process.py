"""Process plumbing of the `gdl` command: quieting native stderr noise, the per-run log file, and
stopping on Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path

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


def quiet_native_stderr() -> None:
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


def run_logging(verbose: bool) -> _RunLog:
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
