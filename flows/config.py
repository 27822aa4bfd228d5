"""Resolve a technique's parameters: params.yaml profile, then `--set` overrides, validated."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from models.core.errors import GdlError, echo
from models.core.params import (
    active_profile,
    parse_overrides,
    profile_values,
    read_params_file,
    render_params_yaml,
    render_reference,
    validate,
)
from models.core.registry import get, techniques
from tasks.steps import project_root, resolve_inputs

PARAMS_FILE = "params.yaml"


def params_path(root: Path | None = None) -> Path:
    return (root or project_root()) / PARAMS_FILE


def overrides_from_cli(items: Iterable[str], technique: str = "all") -> dict[str, Any]:
    """`--set` items as a flat {"technique.param": value} mapping, keys checked: each names a
    technique, and one that `technique` (what is run; `all`: every one) does not run is refused."""
    nested = parse_overrides(items)
    registry = techniques()
    for section in nested:
        if section not in registry:
            raise GdlError(
                f"unknown parameter section {echo(section)} in --set; "
                f"techniques: {', '.join(sorted(registry))}"
            )
        if technique != "all" and section != technique:
            name = next(iter(nested[section]))
            raise GdlError(
                f"--set {section}.{name}: gdl run {technique} does not run {section} (it would be ignored)"
            )
    return {f"{s}.{k}": v for s, kv in nested.items() for k, v in kv.items()}


def resolve_params(
    technique: str,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    rehearse: bool = False,
) -> dict[str, Any]:
    """The validated params of `technique` as a JSON-able dict; raises GdlError naming the
    parameter and what is allowed. `rehearse` caps the counts (the technique's `rehearsal`),
    after the overrides: a rehearsal stays a rehearsal whatever `--set` says."""
    t = get(technique)
    data = read_params_file(params_path())
    chosen = active_profile(data, profile)
    values = profile_values(data, chosen, technique, t.params_model)
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        if section == technique:
            values[name] = value
    if rehearse:
        values = t.rehearsal.apply(values)
    p = validate(technique, t.params_model, values)
    resolve_inputs(t, p)  # an unknown dataset or a bad source fails here, naming the parameter
    return p.model_dump(mode="json")


def check_all(profile: str | None, overrides: Mapping[str, Any], rehearse: bool = False) -> None:
    """Validate every technique's params up front (before `gdl run all` does any work)."""
    for name in techniques():
        resolve_params(name, profile, overrides, rehearse)


def render_params() -> str:
    return render_params_yaml({name: (t.params_model, t.demo_overrides) for name, t in techniques().items()})


def render_techniques_table() -> str:
    """Markdown table of the registered techniques: name, datasets per profile, inputs, whether
    it trains data-parallel (`replicas`), summary."""
    lines = [
        "| technique | inputs (full → demo) | replicas | what it does |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in techniques().items():
        full, demo = (t.active_inputs(t.profile_params(p)) for p in ("full", "demo"))
        inputs = "; ".join(
            f"{i}: `{full[i][0]}` {full[i][1]} → {demo[i][1] if i in demo else 'none'}" if i in full else i
            for i in t.inputs
        )
        parallel = "yes" if t.supports_replicas else "no"
        lines.append(f"| `{name}` | {inputs} | {parallel} | {t.summary} |")
    return "\n".join(lines) + "\n"


def render_params_reference() -> str:
    params = render_reference({name: (t.params_model, t.demo_overrides) for name, t in techniques().items()})
    return render_techniques_table() + "\n" + params
