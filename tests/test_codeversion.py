"""Cache keys follow the code a step runs: sampler edits do not retrain, report edits re-run
nothing but publishing, comments and formatting keep every cache."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from models.core import codeversion
from tasks.steps import _roots, code_version

MODULE = '''
"""A technique."""
import numpy as np
from cvpkg.shared import fit

STEPS = 3


def train(p):
    """Docstring."""
    train, val = split(p)  # locals named like module-level functions are not references
    return fit(train, STEPS)


def split(p):
    return p, p


class Sampler:
    def draw(self, x):
        return x * 2


def sample(p):
    return Sampler().draw(p)


def report(p):
    return "<b>" + str(p) + "</b>"
'''
SHARED = """
from cvpkg import lazy as lazy_module

try:
    SCALE = 2
except ImportError:
    SCALE = 3
SCALE += 1


def fit(x, steps):
    from cvpkg.lazy import inner  # imports inside functions are followed too

    return inner(x) * steps * SCALE


def fit_via_module(x):
    from cvpkg import lazy  # a module imported inside a function, used as lazy.helper

    return lazy.helper(x) + lazy_module.other(x)


def unused():
    return 0
"""
LAZY = """
def inner(x):
    return x + 1


def helper(x):
    return x - 1


def other(x):
    return x
"""


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "cvpkg").mkdir(parents=True)
    (root / "cvpkg" / "__init__.py").write_text("")
    files = {"tech": MODULE, "shared": SHARED, "lazy": LAZY}
    for name, text in files.items():
        (root / "cvpkg" / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(codeversion, "PROJECT_ROOT", root)
    for name in [m for m in sys.modules if m.startswith("cvpkg")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()

    def edit(module: str, old: str, new: str) -> None:
        path = root / "cvpkg" / f"{module}.py"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    def versions() -> dict[str, str]:
        found = {step: codeversion.digest([("cvpkg.tech", step)]) for step in ("train", "sample", "report")}
        found["via_module"] = codeversion.digest([("cvpkg.shared", "fit_via_module")])
        return found

    return edit, versions


def test_editing_the_sampler_changes_only_the_sample_version(pkg):
    edit, versions = pkg
    before = versions()
    edit("tech", "return x * 2", "return x * 3")
    after = versions()
    assert after["sample"] != before["sample"]
    assert after["train"] == before["train"] and after["report"] == before["report"]


def test_editing_report_styling_changes_only_the_report_version(pkg):
    edit, versions = pkg
    before = versions()
    edit("tech", '"<b>"', '"<i>"')
    after = versions()
    assert after["report"] != before["report"]
    assert after["train"] == before["train"] and after["sample"] == before["sample"]


def test_comments_docstrings_and_formatting_keep_every_version(pkg):
    edit, versions = pkg
    before = versions()
    edit("tech", '"""Docstring."""', '"""Reworded, at length."""')
    edit("tech", "# locals named", "# a different comment; locals named")
    edit("tech", "return fit(train, STEPS)", "return fit(\n        train,\n        STEPS,\n    )")
    assert versions() == before


def test_code_reached_through_imports_and_constants_counts(pkg):
    edit, versions = pkg
    before = versions()
    edit("lazy", "x + 1", "x + 2")  # imported inside fit(), which train calls
    assert versions()["train"] != before["train"]
    middle = versions()
    edit("tech", "STEPS = 3", "STEPS = 4")
    assert versions()["train"] != middle["train"]
    last = versions()
    edit("shared", "return 0", "return 1")  # in the module, but never called by train
    assert versions() == last


def test_modules_used_by_attribute_and_definitions_in_blocks_count(pkg):
    edit, versions = pkg
    before = versions()
    edit("lazy", "return x - 1", "return x - 2")  # lazy.helper, through `from cvpkg import lazy`
    assert versions()["via_module"] != before["via_module"] and versions()["train"] == before["train"]
    middle = versions()
    edit("lazy", "return x\n", "return -x\n")  # lazy_module.other, through a module-level alias
    assert versions()["via_module"] != middle["via_module"]
    last = versions()
    edit("shared", "SCALE += 1", "SCALE += 2")  # an augmented assignment after the definition
    assert versions()["train"] != last["train"]
    final = versions()
    edit("shared", "    SCALE = 2", "    SCALE = 5")  # a definition inside a top-level try
    assert versions()["train"] != final["train"]


def test_a_root_that_is_not_a_top_level_definition_is_an_error(pkg):
    with pytest.raises(ValueError, match="not a top-level definition"):
        codeversion.digest([("cvpkg.tech", "<lambda>")])


def test_text_lstm_training_does_not_depend_on_its_sampler_or_report():
    train = codeversion.closure(_roots("text_lstm", "train"))
    sample = codeversion.closure(_roots("text_lstm", "sample"))
    publish = codeversion.closure(_roots("text_lstm", "publish"))
    assert "models.techniques.text_lstm:train" in train and "models.toolkit.training:fit_resumable" in train
    assert (
        "models.techniques.text_sampler:TextSampler" not in train
        and "models.techniques.text_lstm:report" not in train
    )
    assert not any(
        label.startswith(("models.reporting.report:", "models.reporting.gallery:")) for label in train
    )
    assert "models.techniques.text_sampler:TextSampler" in sample
    assert (
        "models.reporting.report:render_html" in publish
        and "models.reporting.gallery:render_gallery" in publish
    )
    assert code_version("text_lstm", "train") != code_version("text_lstm", "sample")


def test_editing_a_page_template_changes_only_the_publish_version(tmp_path, monkeypatch):
    from models.reporting import report
    from tasks.steps import step_code_files

    before = {step: code_version("text_lstm", step) for step in ("train", "sample", "publish")}
    assert report.TEMPLATES / "report.html" in step_code_files("text_lstm", "publish")
    assert report.TEMPLATES / "report.html" not in step_code_files("text_lstm", "train")
    copy = tmp_path / "templates"
    copy.mkdir()
    for page in report.TEMPLATES.glob("*.html"):
        (copy / page.name).write_text(page.read_text())
    (copy / "report.html").write_text((copy / "report.html").read_text() + "\n<!-- restyled -->\n")
    monkeypatch.setattr(report, "TEMPLATES", copy)
    after = {step: code_version("text_lstm", step) for step in ("train", "sample", "publish")}
    assert after["train"] == before["train"] and after["sample"] == before["sample"]
    assert after["publish"] != before["publish"]
