"""Typed parameters: one pydantic model per technique, profiles from params.yaml, `--set` overrides.

Every field is tagged with the first pipeline step that reads it. A step's cache key (Prefect)
and its DVC `params:` list are the fields of that step and of every step before it, so changing
`temperatures` re-runs sample and publish and nothing upstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.core.errors import GdlError, echo, one_line

STEPS = ("download", "vectorize", "train", "sample", "publish")
PROFILES = ("demo", "full")
DEFAULT_PROFILE = "demo"
INT32_MAX = 2**31 - 1  # seeds, lengths and counts reach TensorFlow as 32-bit integers


def param(default: Any, step: str, description: str, *, keyed: bool = True, **constraints: Any) -> Any:
    """A parameter field: its default (the book's value), the step that first reads it, and why.
    `keyed=False`: how a step runs, not what it computes (a time budget), so it is left out of
    the cache keys and DVC's params: changing it resumes a step instead of starting it over."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    extra = {"step": step} if keyed else {"step": step, "keyed": False}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


OWN_LOCATION = "your own https://, s3://, env:NAME or local path"


def source_param(
    what: str, default: str = "remote", *, remote: str | None = "", offline: str = "", own: str = ""
) -> Any:
    """Where an input is read from (an `Input`'s source field): remote (the book's source),
    offline (a packaged stand-in) or a location of the user's own. `remote`, `offline` and `own`
    add a note to each choice; `remote=None` says the input has no remote source."""

    def noted(choice: str, note: str) -> str:
        return f"{choice} ({note})" if note else choice

    choices = [] if remote is None else [noted("remote", remote)]
    choices += [noted("offline", offline), noted(OWN_LOCATION, own)]
    return param(default, "download", f"Where to read {what}: {', '.join(choices[:-1])} or {choices[-1]}.")


def weights_source_param(what: str, *, optional: bool = True) -> Any:
    """Where a network's pretrained weights are read from; an optional input also takes none."""
    choices = "remote, offline, a file of your own, or none (random initialisation)"
    if not optional:
        choices = "remote, offline or a file of your own"
    return param("remote", "download", f"Where to read {what}: {choices}.")


def max_pixels_param(default: int = 50_000_000, what: str = "images", ge: int = 1) -> Any:
    """The decompression-bomb guard of an image input."""
    return param(
        default, "vectorize", f"Refuse {what} with more pixels than this (checked before decoding).", ge=ge
    )


class TechniqueParams(BaseModel):
    """Fields every technique has. Subclasses add the technique's own, with the book's defaults."""

    # Strict: `true` is not an epoch count, "128" is not a batch size and 2.0 is not an int (the
    # values come typed from YAML and JSON: params.yaml, --set, the Prefect UI). Floats must be
    # finite: an infinite learning rate is not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    seed: int = param(
        1337, "vectorize", "Seed for splits, shuffling, initialisation and sampling.", ge=0, le=INT32_MAX
    )
    device: Literal["auto", "cpu", "gpu"] = param(
        "auto", "train", "Where to train: 'auto' uses a GPU when TensorFlow sees one."
    )
    mixed_precision: bool = param(
        False, "train", "Train in mixed_float16 (GPU only; ignored with a warning on CPU)."
    )
    jit_compile: bool = param(False, "train", "Compile the training step with XLA.")
    max_train_minutes: float | None = param(
        None,
        "train",
        "Stop training after this many minutes with a checkpoint; the run ends incomplete and the "
        "next run with the same params resumes (checked per epoch or iteration; null: no budget).",
        keyed=False,
        gt=0,
        le=60 * 24 * 366,
    )

    @field_validator("*", mode="after")
    @classmethod
    def _int32(cls, value: Any) -> Any:
        """Every integer (alone or in a list) fits TensorFlow's 32 bits, unless a field says less."""
        items = value if isinstance(value, list) else [value]
        if any(type(v) is int and not -INT32_MAX - 1 <= v <= INT32_MAX for v in items):
            raise ValueError(f"integers must lie within +-{INT32_MAX} (32 bits)")
        return value

    @classmethod
    def fields_for_step(cls, step: str) -> list[str]:
        """Names of the fields read by `step` or by any step before it (what its cache key and
        DVC's params hold: keyed fields only)."""
        upto = STEPS[: STEPS.index(step) + 1]
        return [
            name
            for name, info in cls.model_fields.items()
            if (info.json_schema_extra or {}).get("step") in upto
            and (info.json_schema_extra or {}).get("keyed", True)
        ]

    def subset(self, step: str) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.fields_for_step(step)}


class DataParallelParams(TechniqueParams):
    """A technique that can train data-parallel: `replicas` devices share each global batch
    (models/toolkit/distribute.py). Techniques whose recipe does not allow it (batch 1, an
    optimised image) do not have the field. `global_batch_size` is the batch in force."""

    replicas: int = param(
        1,
        "train",
        "Devices training in parallel (tf.distribute.MirroredStrategy over that many GPUs, or "
        "logical CPU devices without a GPU); each gets an equal share of every batch, whose size "
        "must be divisible by it. 1: one device, no strategy.",
        ge=1,
    )

    def global_batch_size(self) -> int:
        return self.batch_size  # type: ignore[attr-defined]

    def check_replicas(self, section: str) -> None:
        """The batch splits evenly between the replicas (one-line GdlError otherwise)."""
        batch = self.global_batch_size()
        if batch % self.replicas:
            raise GdlError(
                f"{section}.batch_size={batch} is not divisible by {section}.replicas={self.replicas}"
            )


def supports_replicas(model: type[TechniqueParams]) -> bool:
    """Whether a technique's params model trains data-parallel (has `replicas`)."""
    return issubclass(model, DataParallelParams)


def _describe_error(section: str, err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in (section, *err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"unknown parameter '{loc}'"
    return f"{loc}: {err['msg']} (got {echo(err.get('input'))})"


# Renamed parameters, old name -> new name: a params.yaml section or `--set` that still uses an
# old name fails naming the new one. RENAMED holds for every technique that has the new name;
# RENAMED_IN per technique, where one old name took different new ones.
RENAMED: dict[str, str] = {
    "heldout": "held_out",  # GAN and VAE, as the translation techniques spell it
    "snapshot_every": "frame_every",  # GANs, as the other iterative techniques spell it
    "clip_value": "weight_clip",  # GANs: WGAN's critic weight clipping
    "clipvalue": "gradient_clip",  # GANs: the optimisers' gradient value clipping
}
RENAMED_IN: dict[str, dict[str, str]] = {
    "deepdream": {"step": "step_size"},  # a float step size
    "text_lstm": {"step": "stride"},  # an integer stride between windows
}


def renamed_to(section: str, model: type[TechniqueParams], name: str) -> str | None:
    """The new name of a parameter `name` that `section`'s model no longer has (None: not renamed)."""
    new = RENAMED_IN.get(section, {}).get(name) or RENAMED.get(name)
    return new if new in model.model_fields and name not in model.model_fields else None


def validate(section: str, model: type[TechniqueParams], values: Mapping[str, Any]):
    """Build the params model, turning pydantic's report into one readable line."""
    for name in values:
        new = renamed_to(section, model, name)
        if new:
            raise GdlError(f"{section}: parameter '{name}' was renamed to '{new}'")
    try:
        params = model(**values)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(section, e) for e in exc.errors())
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            problems += f" (valid keys: {', '.join(sorted(model.model_fields))})"
        raise GdlError(f"invalid parameters: {problems}") from None
    if isinstance(params, DataParallelParams):
        params.check_replicas(section)
    floor = getattr(params, "memory_floor", None)
    if floor is not None:  # sizes the machine cannot hold: refused before any work
        from models.core.memory import check_memory

        check_memory(section, *floor())
    return params


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `5e-4` and `1e3` (no dot) are strings; YAML 1.2 and every
    user mean numbers: this loader reads them as floats."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _NoAliases(_Yaml12Floats):
    """A `--set` value: one value on a command line has no use for `*alias`, which lets 600 bytes
    expand to millions of items ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise GdlError("YAML aliases (*name) are not accepted in a --set value")
        return super().compose_node(parent, index)


# The most items (collection entries) params.yaml may expand to with its aliases: the generated
# file has about a thousand; a file of aliases nested ten deep would have billions.
MAX_YAML_ITEMS = 100_000


def _check_expansion(value: Any, where: str) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_ITEMS (walks at most that many)."""
    todo, seen = [value], 0
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        else:
            continue
        seen += len(item)
        if seen > MAX_YAML_ITEMS:
            raise GdlError(f"{where} expands to more than {MAX_YAML_ITEMS} items (YAML aliases?)")


def load_yaml(text: str, *, aliases: bool = True) -> Any:
    """YAML as params.yaml and `--set` values are read (exponents without a dot are numbers);
    `aliases=False` refuses `*alias` (GdlError)."""
    return yaml.load(text, Loader=_Yaml12Floats if aliases else _NoAliases)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """PyYAML's report (several lines of marks) as one line: file:line:column: problem."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else str(shown)
    return one_line(f"{where}: {problem} (not valid YAML)")


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Turn `["text_lstm.epochs=3", ...]` into `{"text_lstm": {"epochs": 3}}` (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name or "." in name:
            raise GdlError(f"bad --set {echo(item)}: expected TECHNIQUE.PARAM=VALUE, e.g. text_lstm.epochs=3")
        try:
            value = load_yaml(raw, aliases=False) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except GdlError as exc:
            raise GdlError(f"--set {echo(item)}: {exc}") from None
        out.setdefault(section, {})[name] = value
    return out


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise GdlError(f"parameter file {path} not found (run gdl from the repository root)")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GdlError(_yaml_problem(path, exc)) from None
    _check_expansion(data, str(path))
    if not isinstance(data, dict):
        raise GdlError(f"{path} must be a mapping with 'profile' and one section per profile")
    return data


def active_profile(data: Mapping[str, Any], profile: str | None) -> str:
    chosen = profile or data.get("profile") or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise GdlError(f"unknown profile {chosen!r}; valid: {', '.join(PROFILES)}")
    return chosen


def profile_values(
    data: Mapping[str, Any], profile: str, section: str, model: type[TechniqueParams]
) -> dict[str, Any]:
    """The values params.yaml gives `section` under `profile` (missing fields take the model's defaults)."""
    block = data.get(profile) or {}
    if not isinstance(block, dict):
        raise GdlError(f"params.yaml: {profile} must be a mapping of technique sections")
    values = block.get(section) or {}
    if not isinstance(values, dict):
        raise GdlError(f"params.yaml: {profile}.{section} must be a mapping")
    return dict(values)


def render_params_yaml(sections: Mapping[str, tuple[type[TechniqueParams], Mapping[str, Any]]]) -> str:
    """params.yaml text: every field of every technique, for both profiles, with descriptions."""
    lines = [
        "# Every parameter of every technique, per profile. Generated by `gdl params --write`",
        "# from the parameter models in models/ (defaults = the books' values, profile 'full');",
        "# edit values freely: gdl and dvc validate and read this file.",
        "# `profile` selects what `dvc repro` runs; `gdl run --profile` chooses per run.",
        f"profile: {DEFAULT_PROFILE}",
    ]
    for profile in PROFILES:
        lines.append(f"{profile}:")
        for section, (model, demo_overrides) in sections.items():
            values = model().model_dump(mode="json")
            if profile == "demo":
                values.update(demo_overrides)
            model(**values)  # demo overrides must validate too
            lines.append(f"  {section}:")
            for name, info in model.model_fields.items():
                dumped = yaml.safe_dump({name: values[name]}, default_flow_style=True, width=1000)
                lines.append(f"    {dumped.strip()[1:-1]}  # {info.description}")
    return "\n".join(lines) + "\n"


def render_reference(sections: Mapping[str, tuple[type[TechniqueParams], Mapping[str, Any]]]) -> str:
    """Markdown reference of every parameter: type, book default (full), demo value, step, meaning."""
    out = []
    for section, (model, demo_overrides) in sections.items():
        out += [
            f"#### `{section}`",
            "",
            "| parameter | type | full (book) | demo | step | meaning |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        full = model().model_dump(mode="json")
        demo = {**full, **demo_overrides}
        for name, info in model.model_fields.items():
            if get_origin(info.annotation) is Literal:
                kind = " or ".join(f"`{a}`" for a in get_args(info.annotation))
            else:
                kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
                kind = kind.replace("typing.", "").replace("|", "or")
            step = (info.json_schema_extra or {}).get("step", "")
            bounds = [
                f"{k} {getattr(m, k)}"
                for m in info.metadata
                for k in ("ge", "gt", "le", "lt")
                if getattr(m, k, None) is not None
            ]
            meaning = info.description + (f" ({', '.join(bounds)})" if bounds else "")
            out.append(
                f"| `{name}` | {kind} | `{json.dumps(full[name])}` | `{json.dumps(demo[name])}` "
                f"| {step} | {meaning} |"
            )
        out.append("")
    return "\n".join(out)
