"""The technique registry: each technique is registered once and every layer finds it here.

A technique module under `models/techniques/` builds a `Technique` and calls `register`; modules
are discovered (every module under `models.techniques` is imported on first registry access), so adding a
technique is its module and its tests. `GDL_EXTRA_TECHNIQUES` (comma-separated importable module
names) registers techniques that live elsewhere: a user's own, or the tests' tiny ones. The CLI,
the Prefect flows, the DVC stage generator, params.yaml and the tests all iterate this registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.core.budget import NO_BUDGET, Budget
from models.core.errors import GdlError
from models.core.params import TechniqueParams, supports_replicas
from models.core.settings import settings

# progress(done, total, logs): `done` may be fractional (1.5 of 4 epochs) for smooth progress.
ProgressFn = Callable[[float, int, Mapping[str, float]], None]


def _no_progress(done: float, total: int, logs: Mapping[str, float]) -> None:
    pass


@dataclass(frozen=True)
class StepContext:
    """What a step function gets besides its params: where to read, where to write, how to report."""

    upstream: Mapping[str, Path]  # upstream step name -> its output directory
    out: Path  # this step's output directory (a fresh staging dir, or the resumable checkpoint dir)
    inputs: Mapping[str, Path] = field(default_factory=dict)  # input name -> its fetched file/folder
    key: str = ""  # this step's cache key: what a resumable step fingerprints its checkpoints with
    progress: ProgressFn = _no_progress
    log: Callable[[str], None] = print
    budget: Budget = NO_BUDGET  # the train step's max_train_minutes


@dataclass(frozen=True)
class Input:
    """A named input of a technique (a corpus, weights, a content image, a domain...).

    `dataset` is the catalog entry it reads, fixed or chosen from the params (a backbone's
    weights depend on the backbone); `source` names the params field that picks where it is read
    from: remote, offline, or a location of the user's own. An optional input is left out when
    its source is "none" (e.g. random initialisation instead of pretrained weights).
    """

    dataset: str | Callable[[Any], str]
    source: str
    optional: bool = False

    def dataset_name(self, params: Any) -> str:
        return self.dataset(params) if callable(self.dataset) else self.dataset


NO_INPUT = "none"


def _steps(p: Any, inputs: Mapping[str, Path]) -> int:
    return int(p.steps)


@dataclass(frozen=True)
class Rehearsal:
    """How a technique rehearses a profile (`gdl run --rehearse`): the profile's data, shapes and
    networks, with only counts capped (steps, epochs, images) so it takes a minute or two on a CPU.

    `caps`: param -> cap; a number is lowered to it (None, "all", counts as unbounded), anything
    else is replaced. `updates(params, inputs)`: the training updates (optimizer steps, or loss
    evaluations of an optimised image) a run of these params makes, from its downloaded inputs
    where the count depends on the data; it turns the rehearsal's measured seconds per update
    into the uncapped run's projected time. `unit` names what an update is.
    """

    caps: Mapping[str, Any]
    updates: Callable[[Any, Mapping[str, Path]], int] = _steps
    unit: str = "step"

    def apply(self, values: Mapping[str, Any]) -> dict[str, Any]:
        capped = dict(values)
        for name, cap in self.caps.items():
            if name not in capped:  # a cap shared by a family (GANs) that this member lacks
                continue
            current = capped[name]
            numbers = isinstance(cap, int | float) and not isinstance(cap, bool)
            if numbers and isinstance(current, int | float) and not isinstance(current, bool):
                capped[name] = min(current, cap) if current > 0 else cap  # 0: "all" for counts
            else:
                capped[name] = cap
        return capped


@dataclass(frozen=True)
class Technique:
    """A pipeline: download -> vectorize -> train -> sample, then the shared publish step."""

    name: str
    summary: str
    params_model: type[TechniqueParams]
    inputs: Mapping[str, Input]
    vectorize: Callable[[Any, StepContext], dict[str, Any]]
    train: Callable[[Any, StepContext], dict[str, Any]]
    sample: Callable[[Any, StepContext], dict[str, Any]]
    report: Callable[[Any, Mapping[str, Path]], Any]  # params, step dirs -> models.reporting.report.Report
    headline: tuple[str, ...]  # metrics the gallery leads with; the first is charted per run
    history_x: str = "epoch"  # what the rows of the report's history (history.csv, DVC plots) count
    # DVC plots: title -> history.csv columns drawn together against history_x (train and
    # validation loss on one chart); `dvc plots show/diff` render them across commits.
    plots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    demo_overrides: Mapping[str, Any] = field(default_factory=dict)  # offline, CPU-sized
    tiny_overrides: Mapping[str, Any] = field(default_factory=dict)  # seconds, for the tests
    rehearsal: Rehearsal = field(default_factory=lambda: Rehearsal({}))  # `gdl run --rehearse`
    module: str = ""  # the defining module, e.g. "models.techniques.text_lstm"

    def profile_params(self, profile: str) -> Any:
        defaults = self.params_model()
        if profile == "full":
            return defaults
        overrides = {"demo": self.demo_overrides, "tiny": {**self.demo_overrides, **self.tiny_overrides}}
        return self.params_model(**{**defaults.model_dump(), **overrides[profile]})

    def active_inputs(self, params: Any) -> dict[str, tuple[str, str]]:
        """input name -> (dataset, source) for these params (optional inputs set to none left out)."""
        found = {}
        for name, spec in self.inputs.items():
            source = getattr(params, spec.source)
            if spec.optional and source == NO_INPUT:
                continue
            found[name] = (spec.dataset_name(params), source)
        return found

    @property
    def dataset_names(self) -> tuple[str, ...]:
        """The datasets of both profiles, the book's first."""
        names = [
            d
            for profile in ("full", "demo")
            for d, _ in self.active_inputs(self.profile_params(profile)).values()
        ]
        return tuple(dict.fromkeys(names))

    @property
    def supports_replicas(self) -> bool:
        """Whether it trains data-parallel: its params have `replicas` (DataParallelParams)."""
        return supports_replicas(self.params_model)

    def step_function(self, step: str) -> Callable:
        return {
            "vectorize": self.vectorize,
            "train": self.train,
            "sample": self.sample,
            "publish": self.report,
        }[step]


_REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    if technique.name in _REGISTRY and _REGISTRY[technique.name].module != technique.module:
        raise ValueError(f"technique {technique.name!r} registered twice")
    if not technique.headline:
        raise ValueError(f"technique {technique.name!r} must declare its headline metrics")
    for spec in technique.inputs.values():
        if spec.source not in technique.params_model.model_fields:
            raise ValueError(
                f"technique {technique.name!r}: input source field {spec.source!r} is not a param"
            )
    _REGISTRY[technique.name] = technique
    return technique


def _extra_modules() -> list[str]:
    return list(settings().extra_techniques)


def _load() -> list[str]:
    """Import every `models` module (registering the techniques among them) and the extra ones;
    return the modules whose techniques are visible now."""
    import models.techniques as package

    ours = [
        m.name
        for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
        if not m.name.rsplit(".", 1)[-1].startswith("_")
    ]
    extra = _extra_modules()
    for module in ours + extra:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if module in extra:
                raise GdlError(f"GDL_EXTRA_TECHNIQUES: cannot import {module!r} ({exc})") from None
            raise
    return ours + extra


def techniques() -> dict[str, Technique]:
    visible = set(_load())
    return {name: t for name, t in sorted(_REGISTRY.items()) if t.module in visible}


def known(names: list[str]) -> list[str]:
    """`names` as given, once each they are all registered; else one line naming the others."""
    unknown = sorted(set(names) - set(techniques()))
    if unknown:
        raise GdlError(f"unknown technique(s): {', '.join(unknown)} (see gdl list)")
    return names


def get(name: str) -> Technique:
    registry = techniques()
    if name not in registry:
        raise GdlError(f"unknown technique {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]
