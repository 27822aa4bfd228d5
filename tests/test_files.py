"""Shared plumbing: hostile names, manifests, redaction, retries, slot locks."""

from __future__ import annotations

import pytest

from models.core.errors import GdlError
from models.core.files import dir_manifest, retry, safe_name
from models.inputs.catalog import redact
from tasks.steps import local_dir


@pytest.mark.parametrize("name", ["run\n", "../x", "a/b", ".hidden", "", "x" * 200, "a..b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(GdlError):
        safe_name(name)


def test_manifest_ignores_dot_files_and_leftover_staging_dirs(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".step.json").write_text("{}")
    (tmp_path / ".samples.123.tmp").mkdir()
    (tmp_path / ".samples.123.tmp" / "half.txt").write_text("half")
    assert list(dir_manifest(tmp_path)) == ["a.txt"]


def test_redact_drops_credentials_and_signatures():
    url = "https://user:secret@host.example:8443/c.txt?X-Amz-Signature=abc&X-Amz-Credential=k"
    assert redact(url) == "https://host.example:8443/c.txt"
    assert redact("/local/path.txt") == "/local/path.txt"


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "data/../../x", "models/x"])
def test_a_manifest_from_outside_cannot_point_outside_data(tmp_path, bad):
    with pytest.raises(GdlError):
        local_dir(tmp_path, {"dir": bad})
    assert local_dir(tmp_path, {"dir": "data/raw/t/abc"}) == tmp_path / "data/raw/t/abc"


def test_retry_needs_an_attempt():
    with pytest.raises(GdlError, match="at least 1"):
        retry(lambda: None, attempts=0, backoff=0, retry_on=(OSError,))


def test_a_lock_file_removed_by_its_holder_is_taken_afresh_by_a_waiter(tmp_path):
    import fcntl
    import threading
    import time

    from models.core.files import file_lock

    path = tmp_path / "slot.gdl-lock"
    seen: list[bool] = []
    release = threading.Event()

    def waiter():
        with file_lock(path):
            seen.append(path.exists())
            release.wait(5)

    with file_lock(path, remove_if=lambda: True):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # the waiter now blocks on the file that is about to be removed
    for _ in range(100):
        if seen:
            break
        time.sleep(0.02)
    assert seen == [True]  # it re-took the lock on a file that exists at the path
    with open(path) as fh, pytest.raises(BlockingIOError):  # and it really holds that one
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    release.set()
    thread.join()


def test_numbered_files_come_back_in_order_of_their_numbers(tmp_path):
    from models.core.files import numbered_files, numbered_name

    for n in (12, 3, 100):
        (tmp_path / numbered_name("step", n)).write_bytes(b"")
    (tmp_path / numbered_name("epoch", 7, 4, ".weights.h5")).write_bytes(b"")
    (tmp_path / "step-final.png").write_bytes(b"")  # not a number: not in the series
    assert numbered_name("frame", 5, 4) == "frame-0005.png"
    assert [(n, f.name) for n, f in numbered_files(tmp_path, "step")] == [
        (3, "step-000003.png"),
        (12, "step-000012.png"),
        (100, "step-000100.png"),
    ]
    assert [n for n, _ in numbered_files(tmp_path, "epoch", ".weights.h5")] == [7]
    assert numbered_files(tmp_path / "missing", "step") == []


def test_a_write_that_runs_out_of_room_is_one_line_and_leaves_the_old_file_whole(tmp_path):
    """A real write failure, not a patched one: RLIMIT_FSIZE makes writes past 4 kB fail (EFBIG)
    as a full disk (ENOSPC) does, at the same place."""
    import resource
    import signal

    from models.core.files import write_bytes_atomic

    target = tmp_path / "state.json"
    target.write_bytes(b"old and whole")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        with pytest.raises(GdlError) as caught:
            write_bytes_atomic(target, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(caught.value) == f"cannot write {target}: file size limit reached"
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no hidden temp left


def test_a_step_whose_own_writes_find_no_room_fails_in_one_line_leaving_nothing(project):
    """text_lstm's vectorize writes its corpus with np.save: past a 64-byte file size limit (a real
    EFBIG, as a full disk gives ENOSPC) the step fails in one line naming its output folder, and
    neither the slot nor a hidden staging folder is left."""
    import resource
    import signal

    from flows.config import resolve_params
    from tasks import download, vectorize

    params = resolve_params("text_lstm", None, {})
    raw = download.run("text_lstm", params, {})
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, limits[1]))
    try:
        with pytest.raises(GdlError) as caught:
            vectorize.run("text_lstm", params, {"download": raw})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    message = str(caught.value)
    assert message.startswith("cannot write ") and message.endswith(": file size limit reached")
    slots = project / "data" / "processed" / "text_lstm"
    assert message.split()[2].rstrip(":").startswith(str(slots))
    assert [p.name for p in slots.rglob("*") if not p.name.endswith("gdl-lock")] == []
