"""One typed flow per technique, for the Prefect UI's run form and the server's validation.

A deployment's form is drawn from its flow's signature. `technique_flow` (the one `gdl run`
uses) takes a technique name and a free JSON box of overrides; each flow here instead takes a
`profile` (a choice of demo or full) and every parameter of its technique as a field of its own,
typed, bounded, described and optional, from the technique's pydantic model: a field left
empty takes the profile's value from params.yaml. With `enforce_parameter_schema`, the server
refuses a run whose values do not fit before the run is created; the flow validates again
against the model itself (strictly, as `gdl run` does).

The flows are built from the registry when this module is imported; the deployments of
prefect.yaml name them as `flows/forms.py:<technique>`. They share the flow name `technique`,
so deployments stay `technique/<name>` and `technique/<name>-demo`.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from prefect import Flow, flow

from flows.pipeline import RESULTS, technique_flow
from models.core.params import PROFILES
from models.core.registry import Technique, techniques

Profile = Literal[PROFILES]  # type: ignore[valid-type]


def form_parameters(t: Technique) -> list[inspect.Parameter]:
    """`profile`, then each parameter of the technique: its type with its bounds, or empty."""
    params = [
        inspect.Parameter("profile", inspect.Parameter.KEYWORD_ONLY, default="demo", annotation=Profile),
        inspect.Parameter("rehearse", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    ]
    for name, info in t.params_model.model_fields.items():
        typed = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typed | None)
        )
    return params


def form_docstring(t: Technique) -> str:
    """A Google-style docstring: Prefect shows its Args as the fields' descriptions."""
    lines = [f"{t.name}: {t.summary}.", "", "Args:"]
    lines.append(
        "    profile: Parameter profile of params.yaml: demo (offline, CPU-sized) or full (the book's)."
    )
    lines.append(
        "    rehearse: Rehearse the profile: its real data, shapes and networks with counts capped; "
        "ends with a table of what was found and the projected time of the real run; publishes nothing."
    )
    for name, info in t.params_model.model_fields.items():
        lines.append(f"    {name}: {info.description} Empty: the profile's value.")
    return "\n".join(lines)


def typed_flow(t: Technique) -> Flow:
    def run(profile: str = "demo", rehearse: bool = False, **values: Any) -> dict[str, Any]:
        overrides = {f"{t.name}.{k}": v for k, v in values.items() if v is not None}
        return technique_flow.fn(t.name, profile, overrides, rehearse)

    run.__name__ = run.__qualname__ = t.name
    run.__module__ = __name__
    run.__doc__ = form_docstring(t)
    run.__signature__ = inspect.Signature(form_parameters(t), return_annotation=dict[str, Any])
    return flow(name="technique", flow_run_name=f"{t.name}-{{profile}}", log_prints=True, **RESULTS)(run)


FLOWS: dict[str, Flow] = {name: typed_flow(t) for name, t in techniques().items()}
globals().update(FLOWS)
