"""How a step runs, whichever entry point calls it: its cache key, its output slot, its marker.

Outputs live in `data/<area>/<technique>/<slot>/`. The Prefect flow uses content-addressed slots
(the first 12 hex digits of the step's key), so runs with other params never overwrite each
other and a cached result always points at the bytes it describes. `gdl stage` (what dvc.yaml
calls) uses the fixed slot `dvc`, the paths dvc.yaml declares. Both run the same step functions
on the same params, so they produce the same data, and neither writes into the other's slots
(both update the shared views: the gallery, the dataset pins, the publish target's latest.json).

A step's key is the digest of: the technique, the step, its params (the fields of this step and
of every earlier one), the content digests of its upstream outputs, and the code version (the
technique's module and every `models` module it imports).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from models.files import (
    GdlError,
    digest_json,
    dir_manifest,
    file_lock,
    read_json,
    replace_dir,
    safe_relpath,
    sha256_file,
    staging_dir,
    write_json_atomic,
)
from models.registry import StepContext, Technique, code_files, get

AREAS = {"download": "raw", "vectorize": "processed", "train": "checkpoints", "sample": "runs"}
UPSTREAM = {
    "download": (),
    "vectorize": ("download",),
    "train": ("vectorize",),
    "sample": ("vectorize", "train"),
    "publish": ("vectorize", "train", "sample"),
}
MARKER = ".step.json"
DVC_SLOT = "dvc"
RESUMABLE = {"train"}  # written in place so an interrupted run can resume

Manifest = dict[str, Any]  # JSON-able: what tasks hand each other instead of arrays or models


def project_root() -> Path:
    return Path(os.environ.get("GDL_ROOT") or os.getcwd()).resolve()


def data_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "data"


def step_code_files(technique: str, step: str) -> list[Path]:
    """The code a step runs: its models modules, this module and the step's task module. The
    Prefect cache key hashes them and dvc.yaml declares them as the stage's deps."""
    tasks_dir = Path(__file__).resolve().parent
    return [*code_files(get(technique), step), tasks_dir / "steps.py", tasks_dir / f"{step}.py"]


@cache
def code_version(technique: str, step: str) -> str:
    files = step_code_files(technique, step)
    return digest_json({f"{p.parent.name}/{p.name}": sha256_file(p) for p in files})


def params_model(technique: str, params: Mapping[str, Any]):
    return get(technique).params_model(**params)


def step_key(technique: str, step: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest]) -> str:
    p = params_model(technique, params)
    subset = p.model_dump(mode="json", include=set(p.fields_for_step(step)))
    return digest_json(
        {
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
    return data_dir(root) / AREAS[step] / technique / slot


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


def run_dir_of(root: Path, upstream: Mapping[str, Manifest]) -> Path:
    """The run directory a publish step fills: the one holding the sample step's samples/."""
    return local_dir(root, upstream["sample"]).parent


def read_marker(out: Path) -> Manifest | None:
    marker = out / MARKER
    return read_json(marker) if marker.exists() else None


def is_complete(out: Path, key: str) -> bool:
    marker = read_marker(out)
    return bool(marker) and marker.get("key") == key


def _finish(
    root: Path, technique: str, step: str, key: str, built: Path, final: Path, summary: Any
) -> Manifest:
    """Write the completion marker into `built` (which will become `final`)."""
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
    write_json_atomic(built / MARKER, manifest)
    return manifest


def expected_output(
    technique: str, step: str, params: Mapping[str, Any], upstream: Mapping[str, Manifest]
) -> tuple[str, Path]:
    key = step_key(technique, step, params, upstream)
    return key, step_dir(project_root(), technique, step, slot_name(key, dvc=False))


def execute(
    technique: str,
    step: str,
    params: Mapping[str, Any],
    upstream: Mapping[str, Manifest],
    body: Callable[[Technique, Any, StepContext], Any],
    *,
    dvc: bool = False,
    progress: Callable[[int, int, Mapping[str, float]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Run one step into its slot and return its manifest. Output is all or nothing: a failed
    step leaves no marker, and (except resumable training) no files, in the slot."""
    root = project_root()
    t = get(technique)
    p = t.params_model(**params)
    key = step_key(technique, step, params, upstream)
    out = step_dir(root, technique, step, slot_name(key, dvc))
    inputs = {name: local_dir(root, upstream[name]) for name in UPSTREAM[step]}
    logger = log or logging.getLogger("gdl").info
    with file_lock(slot_lock(out)):
        if not dvc and is_complete(out, key):  # another run finished it while we waited
            return read_marker(out)
        if step in RESUMABLE:
            out.mkdir(parents=True, exist_ok=True)
            ctx = StepContext(inputs, out, progress or (lambda *a: None), logger)
            summary = body(t, p, ctx)
            return _finish(root, technique, step, key, out, out, summary)
        with staging_dir(out) as tmp:
            summary = body(t, p, StepContext(inputs, tmp, progress or (lambda *a: None), logger))
            manifest = _finish(root, technique, step, key, tmp, out, summary)
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
