"""The technique registry: each technique is registered once and every layer finds it here.

A technique module (models/<name>.py) builds a `Technique` and calls `register`. The CLI, the
Prefect flows, the DVC stage generator, params.yaml and the tests all iterate this registry, so
adding a technique is one module plus one line in `TECHNIQUE_MODULES`.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.files import GdlError
from models.params import TechniqueParams

# Technique modules, imported lazily on first registry access (they import TensorFlow lazily too).
TECHNIQUE_MODULES = ("models.text_lstm",)

ProgressFn = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True)
class StepContext:
    """What a step function gets besides its params: where to read, where to write, how to report."""

    inputs: Mapping[str, Path]  # upstream step name -> its output directory
    out: Path  # this step's output directory (a fresh staging dir, or the resumable checkpoint dir)
    progress: ProgressFn = lambda done, total, logs: None
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Technique:
    """A pipeline: download -> vectorize -> train -> sample, then the shared publish step."""

    name: str
    summary: str
    params_model: type[TechniqueParams]
    demo_overrides: Mapping[str, Any]
    dataset_of: Callable[[Any], tuple[str, str]]  # params -> (dataset name, source)
    vectorize: Callable[[Any, StepContext], dict[str, Any]]
    train: Callable[[Any, StepContext], dict[str, Any]]
    sample: Callable[[Any, StepContext], dict[str, Any]]
    report: Callable[[Any, Mapping[str, Path]], Any]  # params, step dirs -> models.report.Report
    module: str = ""  # the defining module, e.g. "models.text_lstm"

    @property
    def dataset_names(self) -> tuple[str, ...]:
        defaults = self.params_model()
        demo = self.params_model(**{**defaults.model_dump(), **self.demo_overrides})
        return tuple(dict.fromkeys((self.dataset_of(defaults)[0], self.dataset_of(demo)[0])))


_REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    if technique.name in _REGISTRY:
        raise ValueError(f"technique {technique.name!r} registered twice")
    _REGISTRY[technique.name] = technique
    return technique


def _load() -> None:
    for module in TECHNIQUE_MODULES:
        importlib.import_module(module)


def techniques() -> dict[str, Technique]:
    _load()
    return dict(_REGISTRY)


def get(name: str) -> Technique:
    registry = techniques()
    if name not in registry:
        raise GdlError(f"unknown technique {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


def _model_imports(path: Path) -> set[str]:
    """Names of the `models.*` modules that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("models."))
    return found


def code_files(technique: Technique, step: str) -> list[Path]:
    """Source files whose change must invalidate a cached step (and its DVC stage): the module
    that does the step's work and every `models` module it imports, transitively. Downloads
    depend only on the data layer, so editing a model does not re-fetch its dataset."""
    pkg = Path(__file__).resolve().parent
    start = "datasets" if step == "download" else technique.module.rsplit(".", 1)[-1]
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        if name in seen or name == "registry":
            continue
        seen.add(name)
        todo.extend(_model_imports(pkg / f"{name}.py"))
    return sorted(pkg / f"{name}.py" for name in seen)
