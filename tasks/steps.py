"""How a step runs, whichever entry point calls it: its cache key, its output slot, its marker.

Outputs live in `data/<area>/<technique>/<slot>/`. The Prefect flow uses content-addressed slots
(the first 12 hex digits of the step's key), so runs with other params never overwrite each
other and a cached result always points at the bytes it describes. `gdl stage` (what dvc.yaml
calls) uses the fixed slot `dvc`, the paths dvc.yaml declares. Both run the same step functions
on the same params, so they produce the same data, and neither writes into the other's slots
(both update the shared views: the gallery, the dataset pins, the publish target's latest.json).

Inputs are downloaded per catalog entry, not per technique: the flow keeps each in
`data/raw/<dataset>/<key>/` (key = the entry's identity, the location and the fetch code), so
techniques that read the same digits or the same weights fetch and pin them once. DVC keeps a
technique's inputs in `data/raw/dvc/<technique>/<input>/`.

A step's key is the digest of: the technique, the step, its params (the fields of this step and
of every earlier one), the content digests of its upstream outputs, and the code version of the
step function (models.core.codeversion: the code it runs, not the module it lives in).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from models.core import codeversion
from models.core.budget import NO_BUDGET, Budget
from models.core.errors import GdlError
from models.core.files import (
    digest_json,
    dir_manifest,
    file_lock,
    prune_empty_dirs,
    read_json,
    replace_dir,
    safe_relpath,
    staging_dir,
    write_json_atomic,
    writing,
)
from models.core.registry import StepContext, Technique, get
from models.core.settings import settings
from models.inputs.catalog import Dataset, describe_source, get_dataset, identity, redact, resolve_location
from models.inputs.fetch import fetch

AREAS = {"download": "raw", "vectorize": "processed", "train": "checkpoints", "sample": "runs"}
UPSTREAM = {
    "download": (),
    "vectorize": ("download",),
    "train": ("download", "vectorize"),
    "sample": ("download", "vectorize", "train"),
    "publish": ("download", "vectorize", "train", "sample"),
}
MARKER = ".step.json"
RUN_INFO = ".step-run.json"  # when and from which commit a slot was computed (not hashed by DVC)
DVC_SLOT = "dvc"
RESUMABLE = {"train"}  # written in place so an interrupted run can resume
# Bumped when the slot layout or the meaning of a key changes (invalidates every cache once).
KEY_VERSION = 3

Manifest = dict[str, Any]  # JSON-able: what tasks hand each other instead of arrays or models


def project_root() -> Path:
    return Path(settings().root or os.getcwd()).resolve()


def data_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "data"


# ---------------------------------------------------------------------------------------------
# Code versions


def _roots(technique: str, step: str) -> list[tuple[str, str]]:
    if step == "download":
        return codeversion.roots_of(fetch)
    roots = codeversion.roots_of(get(technique).step_function(step))
    if step == "publish":  # the run directory, report page and gallery are publishing's code
        roots.append(("tasks.publish", "run"))
    return roots


def code_version(technique: str, step: str) -> str:
    """Digest of the code `step` runs for `technique` (see models.core.codeversion)."""
    digest = codeversion.digest(_roots(technique, step))
    if step != "publish":
        return digest
    h = hashlib.sha256(digest.encode())
    for path in _templates():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _templates() -> list[Path]:
    """The report and gallery templates: publishing's code that is not Python."""
    from models.reporting.report import TEMPLATES

    return sorted(TEMPLATES.glob("*.html"))


def step_code_files(technique: str, step: str) -> list[Path]:
    """The files holding the code a step runs: what dvc.yaml declares as the stage's deps (for
    download, also the offline loaders of the technique's datasets)."""
    roots = _roots(technique, step)
    if step == "download":
        from models.inputs import offline

        for name in get(technique).dataset_names:
            entry = get_dataset(name).offline
            if entry and entry.loader in offline.LOADERS:
                roots += codeversion.roots_of(offline.LOADERS[entry.loader])
    files = codeversion.files(roots)
    return files + _templates() if step == "publish" else files


@cache
def git_version(root: Path) -> str:
    """The commit of the checkout (with "+changes" when it has uncommitted edits), or a note."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        )
        if head.returncode:
            return "not a git checkout"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "git not installed"
    return head.stdout.strip() + (" +changes" if dirty else "")


# ---------------------------------------------------------------------------------------------
# Keys and slots


def params_model(technique: str, params: Mapping[str, Any]):
    return get(technique).params_model(**params)


def resolve_inputs(t: Technique, p: Any) -> dict[str, tuple[Dataset, str]]:
    """input name -> (catalog entry, location) for these params; a bad dataset or source is an
    error naming the parameter, raised before any work."""
    resolved = {}
    for name, (dataset_name, source) in t.active_inputs(p).items():
        field = t.inputs[name].source
        try:
            dataset = get_dataset(dataset_name)
            resolved[name] = (dataset, resolve_location(dataset, source))
        except GdlError as exc:
            raise GdlError(
                f"invalid parameters: {t.name}.{field}={redact(source)!r} (input {name!r}): {exc}"
            ) from None
    return resolved


def input_key(dataset: Dataset, location: str) -> str:
    return digest_json(
        {"v": KEY_VERSION, "input": identity(dataset, location), "code": code_version("", "download")}
    )


def step_key(technique: str, step: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest]) -> str:
    t = get(technique)
    p = t.params_model(**params)
    if step == "download":
        keys = {name: input_key(d, loc) for name, (d, loc) in resolve_inputs(t, p).items()}
        return digest_json({"v": KEY_VERSION, "technique": technique, "step": step, "inputs": keys})
    subset = p.model_dump(mode="json", include=set(p.fields_for_step(step)))
    return digest_json(
        {
            "v": KEY_VERSION,
            "technique": technique,
            "step": step,
            "params": subset,
            "upstream": {name: upstream[name]["digest"] for name in UPSTREAM[step]},
            "code": code_version(technique, step),
        }
    )


def slot_name(key: str, dvc: bool) -> str:
    return DVC_SLOT if dvc else key[:12]


def step_dir(root: Path, technique: str, step: str, slot: str) -> Path:
    if step == "sample":
        return run_dir(root, technique, slot) / "samples"
    if step == "download":  # DVC's per-technique input folder (the flow's inputs: input_dir)
        return data_dir(root) / "raw" / DVC_SLOT / technique
    return data_dir(root) / AREAS[step] / technique / slot


def input_dir(root: Path, technique: str, name: str, dataset: str, key: str, dvc: bool) -> Path:
    if dvc:
        return step_dir(root, technique, "download", DVC_SLOT) / name
    return data_dir(root) / "raw" / dataset / key[:12]


def run_dir(root: Path, technique: str, slot: str) -> Path:
    return data_dir(root) / "runs" / technique / slot


def local_dir(root: Path, manifest: Manifest) -> Path:
    """Where a manifest's bytes are on this machine. Manifests can come from shared storage, so
    their `dir` is checked: a relative path of safe names under data/, nothing else."""
    rel = safe_relpath(str(manifest.get("dir", "")), "step directory")
    if not rel.startswith("data/"):
        raise GdlError(f"step directory {rel!r} is not under data/")
    return root / rel


def slot_lock(out: Path) -> Path:
    """The lock file guarding a slot (beside it, so replacing the slot keeps the lock)."""
    return out.parent / f".{out.name}.gdl-lock"


@contextlib.contextmanager
def guarded_slot(root: Path, out: Path) -> Iterator[None]:
    """Hold the slot's lock while it is built. If building fails, nothing is left that the
    failure made: an empty (resumable) slot folder, the lock file, empty parent folders up to
    data/<area>/. A resumable slot holding checkpoints is kept, with its lock, to resume from."""
    area = data_dir(root) / out.relative_to(data_dir(root)).parts[0]

    def failed_and_empty() -> bool:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        return not out.exists()

    try:
        with file_lock(slot_lock(out), remove_if=failed_and_empty):
            yield
    except BaseException:
        prune_empty_dirs(slot_lock(out).parent, area)
        raise


def run_dir_of(root: Path, upstream: Mapping[str, Manifest]) -> Path:
    """The run directory a publish step fills: the one holding the sample step's samples/."""
    return local_dir(root, upstream["sample"]).parent


def read_marker(out: Path) -> Manifest | None:
    """A slot's completion marker, with when and from which commit it was computed."""
    marker = out / MARKER
    if not marker.exists():
        return None
    manifest = read_json(marker)
    if (out / RUN_INFO).exists():
        info = read_json(out / RUN_INFO)  # may come from shared storage: only its own fields
        manifest.update(
            {
                k: info[k]
                for k in ("started_at", "seconds", "git", "pace")
                if isinstance(info, dict) and k in info
            }
        )
    return manifest


def is_complete(out: Path, key: str) -> bool:
    marker = read_marker(out)
    return bool(marker) and marker.get("key") == key


def input_paths(root: Path, upstream: Mapping[str, Manifest]) -> dict[str, Path]:
    """input name -> the fetched file or folder, from the download manifest."""
    if "download" not in upstream:
        return {}
    found = {}
    for name, entry in upstream["download"]["inputs"].items():
        found[name] = local_dir(root, entry) / safe_relpath(entry["file"], "input file name")
    return found


class Pace:
    """Forwards training progress and notes when each report came, to measure the seconds per
    unit of work (`done`) of the training loop itself: from the first report (after the first
    unit, which carries building the model and the first trace) to the last."""

    def __init__(self, forward: Callable[[float, int, Mapping[str, float]], None] | None):
        self.forward = forward
        self.points: list[tuple[float, float, int]] = []

    def __call__(self, done: float, total: int, logs: Mapping[str, float]) -> None:
        self.points.append((time.perf_counter(), float(done), int(total)))
        if self.forward is not None:
            self.forward(done, total, logs)

    def summary(self) -> dict[str, float] | None:
        # Epoch-based loops report within epochs (fractional `done`) and at each epoch's end,
        # after validation and the checkpoint: the within-epoch reports time the updates alone.
        within = [pt for pt in self.points if not pt[1].is_integer()]
        points = within if len(within) >= 2 else self.points
        if len(points) < 2:
            return None
        (t0, d0, _), (t1, d1, total) = points[0], points[-1]
        if d1 <= d0 or t1 <= t0:
            return None
        return {"done_from": d0, "done_to": d1, "seconds": round(t1 - t0, 4), "total": total}


def _finish(
    root: Path,
    technique: str,
    step: str,
    key: str,
    built: Path,
    final: Path,
    summary: Any,
    started: float,
    info: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write the completion marker into `built` (which will become `final`). When and from which
    commit it ran go to a file of their own: the marker stays the same for the same output, so
    DVC (which hashes the whole slot, minus `.dvcignore`d files) sees an unchanged output."""
    files = dir_manifest(built)
    manifest = {
        "technique": technique,
        "step": step,
        "key": key,
        "dir": final.relative_to(root).as_posix(),
        "digest": digest_json(files),
        "files": files,
        "summary": summary,
    }
    run_info = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
        "git": git_version(root),
        **(info or {}),
    }
    write_json_atomic(built / MARKER, manifest)
    write_json_atomic(built / RUN_INFO, run_info)
    return {**manifest, **run_info}


# ---------------------------------------------------------------------------------------------
# Running a step


def expected_outputs(
    technique: str, step: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest]
) -> list[tuple[str, Path]]:
    """(key, slot) of every output the flow's step writes (one per input for download)."""
    root = project_root()
    if step == "download":
        t = get(technique)
        return [
            (k, input_dir(root, technique, name, d.name, k, dvc=False))
            for name, (d, loc) in resolve_inputs(t, t.params_model(**params)).items()
            for k in [input_key(d, loc)]
        ]
    key = step_key(technique, step, params, upstream)
    return [(key, step_dir(root, technique, step, slot_name(key, dvc=False)))]


def download(
    technique: str, params: Mapping[str, Any], *, dvc: bool = False, log: Callable[[str], None] | None = None
) -> Manifest:
    """Fetch every input of `technique` into its slot (or find it there) and return the step's
    manifest: one entry per input with where its bytes are and what they are."""
    root = project_root()
    t = get(technique)
    p = t.params_model(**params)
    logger = log or logging.getLogger("gdl").info
    entries = {}
    for name, (dataset, location) in resolve_inputs(t, p).items():
        key = input_key(dataset, location)
        out = input_dir(root, technique, name, dataset.name, key, dvc)
        with guarded_slot(root, out):
            marker = read_marker(out) if is_complete(out, key) else None
            if marker is None:
                started = time.time()
                with staging_dir(out, sweep=True) as tmp:
                    summary = fetch(dataset, location, tmp, data_dir(root) / "raw", log=logger)
                    summary["source"] = describe_source(dataset, location)
                    marker = _finish(root, technique, "download", key, tmp, out, summary, started)
                    replace_dir(tmp, out)
                logger(f"{name}: {summary['source']} (sha256 {summary['sha256'][:12]})")
            else:
                logger(f"{name}: {dataset.name} already downloaded ({marker['dir']})")
        entries[name] = {
            "dataset": dataset.name,
            "dir": marker["dir"],
            "digest": marker["digest"],
            **{k: marker["summary"][k] for k in ("file", "kind", "location", "sha256", "source")},
            "started_at": marker["started_at"],
            "seconds": marker["seconds"],
        }
    manifest = {
        "technique": technique,
        "step": "download",
        "key": step_key(technique, "download", params, {}),
        "inputs": entries,
        "digest": digest_json({name: e["digest"] for name, e in entries.items()}),
    }
    if dvc:  # downstream DVC stages find the inputs through this marker
        folder = step_dir(root, technique, "download", DVC_SLOT)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / MARKER, manifest)
    return manifest


def execute(
    technique: str,
    step: str,
    params: Mapping[str, Any],
    upstream: Mapping[str, Manifest],
    body: Callable[[Technique, Any, StepContext], Any],
    *,
    dvc: bool = False,
    progress: Callable[[float, int, Mapping[str, float]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Run one step into its slot and return its manifest. Output is all or nothing: a failed
    step leaves no marker, and (except resumable training) no files, in the slot."""
    root = project_root()
    t = get(technique)
    p = t.params_model(**params)
    if t.supports_replicas and p.replicas > 1:
        # Logical devices exist only if made before TensorFlow starts: before any step's work.
        from models.toolkit.distribute import reserve_devices

        reserve_devices(p.replicas, p.device)
    key = step_key(technique, step, params, upstream)
    out = step_dir(root, technique, step, slot_name(key, dvc))
    dirs = {name: local_dir(root, upstream[name]) for name in UPSTREAM[step] if name != "download"}
    inputs = input_paths(root, upstream)
    logger = log or logging.getLogger("gdl").info

    pace = Pace(progress)
    # The train step's time budget, counted from here; a loop that spends it raises BudgetReached
    # after a checkpoint, which leaves the resumable slot without a marker, to resume from.
    budget = Budget(p.max_train_minutes) if step == "train" else NO_BUDGET

    def context(where: Path) -> StepContext:
        return StepContext(dirs, where, inputs, key, log=logger, progress=pace, budget=budget)

    def info() -> dict[str, Any]:
        # Timing lives beside the marker (RUN_INFO), not in it: DVC sees the same output.
        measured = pace.summary()
        return {"pace": measured} if measured else {}

    with guarded_slot(root, out):
        if not dvc and is_complete(out, key):  # another run finished it while we waited
            return read_marker(out)
        started = time.time()
        if step in RESUMABLE:
            out.mkdir(parents=True, exist_ok=True)
            with writing(out):  # a full disk in the technique's own writes: one line
                summary = body(t, p, context(out))
            return _finish(root, technique, step, key, out, out, summary, started, info())
        with staging_dir(out, sweep=True) as tmp, writing(out):
            summary = body(t, p, context(tmp))
            manifest = _finish(root, technique, step, key, tmp, out, summary, started, info())
            replace_dir(tmp, out)
        return manifest


def dvc_upstream(technique: str, step: str) -> dict[str, Manifest]:
    """Manifests of the `dvc` slots a stage reads (what earlier `gdl stage` calls wrote)."""
    root = project_root()
    found = {}
    for name in UPSTREAM[step]:
        marker = read_marker(step_dir(root, technique, name, DVC_SLOT))
        if marker is None:
            raise GdlError(
                f"stage {technique}-{step} needs the output of {technique}-{name}: "
                f"run `dvc repro {technique}-{name}` (or `gdl stage {technique} {name}`) first"
            )
        found[name] = marker
    return found
