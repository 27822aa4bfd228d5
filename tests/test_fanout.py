"""The nightly's fan-out and the stack's workers, without a server: deployment names, form values,
GPU pinning, and the scheduled nightly's own parameters."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from flows.fanout import chosen, deployment_name, form_values
from flows.stack import parse_gpus, workers_of
from models.core.errors import GdlError
from models.core.registry import techniques


def test_each_technique_runs_on_its_profiles_deployment_with_its_own_overrides():
    assert deployment_name("cyclegan", "full") == "technique/cyclegan"
    assert deployment_name("cyclegan", "demo") == "technique/cyclegan-demo"
    overrides = {"cyclegan.max_train_minutes": 30, "cyclegan.steps": 5, "gan.steps": 7}
    assert form_values("cyclegan", overrides) == {"max_train_minutes": 30, "steps": 5}
    assert form_values("cgan", overrides) == {}  # "gan." is not a prefix of cgan's


def test_a_nightly_runs_all_techniques_or_the_named_ones_in_registry_order():
    assert chosen(None) == list(techniques())
    assert chosen(["vae", "gan"]) == [n for n in techniques() if n in ("vae", "gan")]
    with pytest.raises(GdlError, match="unknown technique"):
        chosen(["gan", "nope"])


def test_one_worker_per_gpu_pinned_to_it_and_the_nightly_on_a_pool_of_its_own():
    plan = workers_of(["0", "3"], cpu_workers=2)
    assert plan == {
        "worker-gpu0": ("gpu", {"CUDA_VISIBLE_DEVICES": "0"}),
        "worker-gpu3": ("gpu", {"CUDA_VISIBLE_DEVICES": "3"}),
        "worker-cpu1": ("cpu", {}),
        "worker-cpu2": ("cpu", {}),
        "worker-nightly": ("nightly", {}),
    }
    assert workers_of([], 1)["worker-gpu"] == ("gpu", {})  # no GPU found: one unpinned worker


@pytest.mark.parametrize("bad", ["", "0,,1", "a", "0,0", "-1", "0;1"])
def test_gpu_ids_are_checked(bad):
    with pytest.raises(GdlError, match="--gpus"):
        parse_gpus(bad)
    assert parse_gpus("0, 2") == ["0", "2"]


def test_the_scheduled_nightly_fans_out_from_its_own_pool_with_budgets_that_validate():
    from flows.config import check_all

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    nightly = {d["name"]: d for d in doc["deployments"]}["nightly"]
    assert nightly["work_pool"]["name"] == "nightly" and nightly["parameters"]["fan_out"] is True
    overrides = nightly["parameters"]["overrides"]
    assert overrides["cyclegan.max_train_minutes"] > 0
    check_all("full", overrides)  # every override names a real parameter with a valid value
