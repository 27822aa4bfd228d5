"""What errors say (issue 16, section 7): one bounded line whatever the value, the user's own
file named, a malformed params.yaml located, overrides that would be ignored refused, and a
loss that explodes treated as divergence."""

from __future__ import annotations

import yaml
from conftest import gdl, tiny

from flows.config import overrides_from_cli


def _bomb(levels: int) -> str:
    """A flow-style YAML list whose aliases expand to 9**levels strings (a few hundred bytes)."""
    names = "abcdefghij"
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    parts += [f"&{names[i]} [{','.join([f'*{names[i - 1]}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith("gdl: error:")
    return lines[0]


def test_a_set_value_of_yaml_aliases_is_refused_in_one_short_line(project):
    value = _bomb(5)  # 59,049 strings from 260 bytes
    assert len(value) < 400
    line = _one_error_line(gdl(project, "run", "text_lstm", "--set", f"text_lstm.temperatures={value}"))
    assert "YAML aliases" in line
    assert len(line) < 1000
    assert not (project / "data").exists()


def test_an_error_quotes_at_most_a_few_hundred_characters_of_a_long_value(project):
    line = _one_error_line(gdl(project, "run", "text_lstm", "--set", "text_lstm.epochs=" + "x" * 5000))
    assert "text_lstm.epochs" in line
    assert "x" * 150 in line  # the value is quoted...
    assert len(line) < 600  # ...cut short


def test_params_yaml_whose_aliases_expand_past_the_bound_is_refused(project):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["demo"]["text_lstm"]["temperatures"] = "BOMB"
    text = yaml.safe_dump(data, sort_keys=False).replace("BOMB", _bomb(6))  # 531,441 strings
    (project / "params.yaml").write_text(text)
    line = _one_error_line(gdl(project, "run", "text_lstm"))
    assert "params.yaml expands to more than" in line
    assert len(line) < 1000


def test_control_characters_in_a_value_are_escaped_not_echoed(project):
    # YAML's double quotes turn \n, \r and \x1b into the characters themselves.
    value = '"/nowhere/x\\ngdl: published everything\\r\\x1b[2J"'
    line = _one_error_line(gdl(project, "run", "deepdream", "--set", f"deepdream.image_source={value}"))
    assert "\x1b" not in line and "\r" not in line
    assert "source /nowhere/x\\ngdl: published everything\\r\\x1b[2J does not exist" in line


def test_a_malformed_params_yaml_is_one_line_with_file_line_and_column(project):
    text = "profile: demo\ndemo:\n  text_lstm:\n    epochs: [3\n    maxlen: 4\n"
    (project / "params.yaml").write_text(text)
    line = _one_error_line(gdl(project, "run", "text_lstm"))
    # PyYAML finds the unclosed flow sequence where `maxlen:` follows it: line 5, column 11.
    assert line.startswith("gdl: error: params.yaml:5:11: ")
    assert "not valid YAML" in line


def test_an_override_for_a_technique_that_is_not_run_is_refused(project):
    line = _one_error_line(gdl(project, "run", "text_lstm", "--set", "dcgan.steps=0"))
    assert "--set dcgan.steps: gdl run text_lstm does not run dcgan" in line
    assert not (project / "data").exists()


def test_the_all_target_takes_an_override_for_every_technique():
    assert overrides_from_cli(["dcgan.steps=3", "text_lstm.epochs=2"], "all") == {
        "dcgan.steps": 3,
        "text_lstm.epochs": 2,
    }


def test_a_loss_that_explodes_fails_the_train_step_and_publishes_nothing(project):
    assert tiny("text_lstm")  # the project's params are tiny: seconds of training
    result = gdl(project, "run", "text_lstm", "--set", "text_lstm.learning_rate=1e30")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("gdl: error:")]
    assert line.startswith("gdl: error: text_lstm train: training diverged in epoch 1: loss=")
    assert "Lower learning_rate" in line
    assert not (project / "data" / "runs").exists()
    assert not (project / "data" / "published").exists()
    # No checkpoint of the diverged state: nothing a re-run would resume from or publish.
    assert not list((project / "data" / "checkpoints").rglob("*.keras"))


def test_an_image_of_the_users_own_is_named_by_its_location_not_the_catalog_entry(project):
    from PIL import Image

    photo = project.parent / "my_photo.png"
    Image.new("RGB", (120, 100), (200, 10, 10)).save(photo)
    result = gdl(
        project,
        "run",
        "deepdream",
        "--set",
        f"deepdream.image_source={photo}",
        "--set",
        "deepdream.max_pixels=5000",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("gdl: error:")]
    assert f"gdl: error: image {photo} has 12000 pixels, over the limit of 5000 (max_pixels)" in line
    assert "chelsea" not in line


def test_an_image_set_too_small_for_its_held_out_split_fails_at_vectorize_naming_both(project):
    # 6 images with held_out 0.1: one held-out image, which FID and KID at sample cannot score.
    result = gdl(project, "run", "vae", "--set", "vae.limit=6", "--set", "vae.held_out=0.1")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("gdl: error:")]
    assert "gdl: error: dataset mnist: held_out=0.1 of its 6 images is 1;" in line
    assert "at least 2" in line
    assert "Task run 'vectorize" in result.stderr and "Task run 'train" not in result.stderr
    assert not (project / "data" / "checkpoints").exists()
