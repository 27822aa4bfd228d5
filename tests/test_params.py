"""Parameters: validated before any work, addressable with --set, params.yaml/dvc.yaml in sync."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from flows.config import overrides_from_cli, render_params, resolve_params
from flows.dvcfile import render as render_dvc
from models.core.errors import GdlError
from models.core.registry import techniques


def test_params_yaml_matches_the_parameter_models():
    assert (REPO / "params.yaml").read_text() == render_params(), "run `gdl params --write`"


def test_dvc_yaml_matches_the_registry():
    assert (REPO / "dvc.yaml").read_text() == render_dvc(REPO), "run `gdl dvc-yaml --write`"


def test_every_technique_has_both_profiles_fully_spelled_out():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert data["profile"] == "demo"
    for name, t in techniques().items():
        for profile in ("demo", "full"):
            assert set(data[profile][name]) == set(t.params_model.model_fields)


def test_full_profile_keeps_the_books_values(project):
    p = resolve_params("text_lstm", "full")
    assert (p["maxlen"], p["stride"], p["batch_size"], p["epochs"]) == (60, 3, 128, 60)
    assert p["learning_rate"] == 0.01 and p["lstm_units"] == 128
    assert p["temperatures"] == [0.2, 0.5, 1.0, 1.2] and p["sample_length"] == 400
    assert p["source"] == "remote"


def test_set_overrides_a_parameter_with_a_typed_value(project):
    overrides = overrides_from_cli(["text_lstm.epochs=3", "text_lstm.temperatures=[0.5, 1.5]"])
    p = resolve_params("text_lstm", None, overrides)
    assert p["epochs"] == 3 and p["temperatures"] == [0.5, 1.5]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("text_lstm.maxlen=0", "text_lstm.maxlen: Input should be greater than or equal to 1"),
        ("text_lstm.stride=-2", "text_lstm.stride: Input should be greater than or equal to 1"),
        ("text_lstm.temperatures=[0.5, 0]", "every temperature must be a finite number >= 0.01"),
        ("text_lstm.temperatures=[-1]", "every temperature must be a finite number >= 0.01"),
        ("text_lstm.epochs=many", "text_lstm.epochs: Input should be a valid integer"),
        ("text_lstm.epoch=3", "unknown parameter 'text_lstm.epoch'"),
        # Issue 7 item 3: values that used to pass and crash later (or silently became 1).
        ("text_lstm.seed=-1", "text_lstm.seed: Input should be greater than or equal to 0"),
        ("text_lstm.seed=3000000000", "text_lstm.seed: Input should be less than or equal to 2147483647"),
        ("text_lstm.sample_length=3000000000", "sample_length: Input should be less than or equal to"),
        ("text_lstm.learning_rate=.inf", "text_lstm.learning_rate: Input should be a finite number"),
        ("text_lstm.learning_rate=.nan", "text_lstm.learning_rate: Input should be a finite number"),
        ("text_lstm.epochs=3000000000", "text_lstm.epochs: Value error, integers must lie within"),
        ("text_lstm.epochs=true", "text_lstm.epochs: Input should be a valid integer"),
        ("text_lstm.epochs=2.5", "text_lstm.epochs: Input should be a valid integer"),
        ("text_lstm.batch_size='128'", "text_lstm.batch_size: Input should be a valid integer"),
        ("text_lstm.jit_compile=1", "text_lstm.jit_compile: Input should be a valid boolean"),
    ],
)
def test_bad_values_are_rejected_naming_the_parameter(project, setting, expected):
    with pytest.raises(GdlError) as err:
        resolve_params("text_lstm", None, overrides_from_cli([setting]))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("text_lstm.source=ftp://x/y", "text_lstm.source='ftp://x/y' (input 'corpus'): unsupported source"),
        ("text_lstm.dataset=nope", "(input 'corpus'): unknown dataset 'nope'; available: "),
        ("text_lstm.dataset=vgg19_imagenet_notop", "dataset vgg19_imagenet_notop has no offline source"),
        ("text_lstm.source={dir}", "is a folder, but dataset nietzsche is one text file"),
        ("text_lstm.source={dir}/absent.txt", "absent.txt does not exist"),
        ("text_lstm.source=s3://bucket-only", "expected s3://bucket/key"),
    ],
)
def test_bad_dataset_or_source_is_rejected_before_any_work(project, tmp_path, setting, expected):
    with pytest.raises(GdlError) as err:
        resolve_params("text_lstm", None, overrides_from_cli([setting.format(dir=tmp_path)]))
    message = str(err.value)
    assert expected.format(dir=tmp_path) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("technique", "old", "new", "value"),
    [
        ("vae", "heldout", "held_out", 0.2),
        ("gan", "heldout", "held_out", 0.2),
        ("gan", "snapshot_every", "frame_every", 10),
        ("wgan", "clip_value", "weight_clip", 0.02),
        ("dcgan_frogs", "clipvalue", "gradient_clip", 1.0),
        ("deepdream", "step", "step_size", 0.02),
        ("text_lstm", "step", "stride", 3),
    ],
)
def test_a_renamed_parameter_fails_naming_its_new_name(project, technique, old, new, value):
    expected = f"{technique}: parameter '{old}' was renamed to '{new}'"
    # --set
    with pytest.raises(GdlError) as err:
        resolve_params(technique, None, overrides_from_cli([f"{technique}.{old}={value}"]))
    assert str(err.value) == expected
    # params.yaml
    params = project / "params.yaml"
    data = yaml.safe_load(params.read_text())
    data[data["profile"]][technique][old] = value
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(GdlError) as err:
        resolve_params(technique)
    assert str(err.value) == expected


def test_unknown_section_and_malformed_set_are_rejected(project):
    with pytest.raises(GdlError, match="unknown parameter section 'txt_lstm'"):
        overrides_from_cli(["txt_lstm.epochs=3"])
    with pytest.raises(GdlError, match="expected TECHNIQUE.PARAM=VALUE"):
        overrides_from_cli(["epochs=3"])


def test_unknown_technique_lists_the_valid_ones(project):
    with pytest.raises(GdlError, match="unknown technique 'vae2'; available: .*text_lstm"):
        resolve_params("vae2")


def test_a_step_depends_on_its_own_and_earlier_parameters_only():
    model = techniques()["text_lstm"].params_model
    assert "temperatures" in model.fields_for_step("sample")
    assert "temperatures" not in model.fields_for_step("train")
    assert {"maxlen", "stride", "seed"} <= set(model.fields_for_step("train"))
    assert set(model.fields_for_step("download")) == {"dataset", "source"}


def test_prefect_yaml_matches_the_registry():
    from flows.deployments import render

    assert (REPO / "prefect.yaml").read_text() == render(), "run `gdl prefect-yaml --write`"
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"]: d for d in doc["deployments"]}
    for technique in techniques():
        assert names[technique]["work_pool"]["name"] == "gpu"
        assert names[f"{technique}-demo"]["parameters"]["profile"] == "demo"
    assert names["nightly"]["schedules"][0]["cron"] and names["nightly"]["schedules"][0]["timezone"]


def test_readme_parameter_reference_is_generated_from_the_models():
    from flows.config import render_params_reference

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- params-reference:start -->\n")[1].split("<!-- params-reference:end -->")[0]
    assert block == render_params_reference(), "run `gdl params --reference` into README.md"


def test_exponent_numbers_without_a_dot_are_numbers_in_set_and_params_yaml(tmp_path):
    from models.core.params import parse_overrides, read_params_file

    # PyYAML alone reads 5e-4 as the string "5e-4" (YAML 1.1); a user means a number.
    assert parse_overrides(["gan.d_learning_rate=5e-4", "gan.steps=1E3"]) == {
        "gan": {"d_learning_rate": 5e-4, "steps": 1000.0}
    }
    assert parse_overrides(["gan.note=e5"]) == {"gan": {"note": "e5"}}
    (tmp_path / "params.yaml").write_text("demo:\n  gan:\n    g_learning_rate: 2e-4\n")
    assert read_params_file(tmp_path / "params.yaml")["demo"]["gan"]["g_learning_rate"] == 2e-4
