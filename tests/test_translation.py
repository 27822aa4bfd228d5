"""What CycleGAN and pix2pix share: the domains (demo tiles, dataset folders, bad input refused
in one line with nothing left behind), the U-Net and PatchGAN shapes, the held-out scores."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from conftest import run_steps

from models.core.errors import GdlError
from models.core.images import png_bytes, save_png
from models.core.registry import StepContext
from models.techniques.translation.common import (
    build_patchgan,
    build_unet_generator,
    edge_map,
    folder_domains,
    load_domains,
    load_meta,
    photo_domains,
    scores,
    vectorize_domains,
)
from models.techniques.translation.pix2pix import Pix2PixParams

RNG = np.random.default_rng(3)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _params(**kw) -> Pix2PixParams:
    return Pix2PixParams(**{"image_size": 32, "photo_side": 64, **kw})


def test_edge_map_draws_dark_lines_on_white_where_the_photo_changes():
    photo = np.zeros((20, 20, 3), np.uint8)
    photo[:, 10:] = 255  # one vertical edge
    edges = edge_map(photo)
    assert edges.shape == photo.shape and edges.dtype == np.uint8
    assert edges[:, 9:11].max() < 50, "the edge is a dark line"
    assert edges[:, :7].min() == 255 and edges[:, 13:].min() == 255, "flat regions stay white"


def test_demo_tiles_are_aligned_pairs_and_held_out_tiles_are_other_tiles(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(70, 100), (90, 64)]):
        save_png(photos / f"p{i}.png", _image(h, w, i))
    p = _params(held_out=0.25)
    domains, files = photo_domains(photos, p)
    again, _ = photo_domains(photos, p)
    assert files == ["p0.png", "p1.png"]
    # 64 x 91 -> 2 x 2 tiles, 64 x 90 (the shorter side is 64) -> 2 x 1 tiles... of 32px each.
    total = sum(len(domains[k]) for k in ("train_a", "test_a"))
    assert total == 2 * 2 + 2 * 2 and len(domains["test_a"]) == 2
    for split in ("train", "test"):
        a, b = domains[f"{split}_a"], domains[f"{split}_b"]
        assert a.shape == b.shape and a.shape[1:] == (32, 32, 3)
        assert np.array_equal(again[f"{split}_a"], a), "deterministic"
    held = {t.tobytes() for t in domains["test_a"]}
    assert not held & {t.tobytes() for t in domains["train_a"]}


def _domain_folders(root, sizes: dict[str, list[tuple[int, int]]]):
    for folder, shapes in sizes.items():
        (root / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            save_png(root / folder / f"{i:03d}.png", _image(h, w, i))
    return root


def test_domain_folders_are_read_and_cyclegan_shuffles_the_training_b_images(tmp_path):
    root = _domain_folders(
        tmp_path / "h2z" / "horse2zebra",
        {
            "trainA": [(40, 40)] * 3,
            "trainB": [(48, 48)] * 5,
            "testA": [(40, 40)] * 2,
            "testB": [(48, 48)] * 2,
        },
    )
    p = _params(dataset="facades", data_source=str(root.parent))
    arrays, files, paired = folder_domains(root.parent, p, paired=False)
    assert {k: len(v) for k, v in arrays.items()} == {"train_a": 3, "train_b": 5, "test_a": 2, "test_b": 2}
    assert paired, "test folders with the same file names are pairs"
    assert len(files) == 12 and files[0] == "horse2zebra/trainA/000.png"
    out = tmp_path / "out"
    out.mkdir()
    vectorize_domains(p, StepContext({}, out, inputs={"data": root.parent}), paired=False)
    saved = load_domains(out)
    assert sorted(t.tobytes() for t in saved["train_b"]) == sorted(t.tobytes() for t in arrays["train_b"])
    assert [t.tobytes() for t in saved["train_b"]] != [t.tobytes() for t in arrays["train_b"]]
    assert load_meta(out)["train_paired"] is False


def test_side_by_side_pairs_are_split_into_a_and_b_and_test_folders_held_out(tmp_path):
    root = tmp_path / "facades"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            left, right = np.full((24, 24, 3), 10 * i, np.uint8), np.full((24, 24, 3), 200, np.uint8)
            save_png(root / split / f"{i}.png", np.concatenate([left, right], axis=1))
    arrays, _, paired = folder_domains(root, _params(), paired=True)
    assert paired and len(arrays["train_a"]) == 4 and len(arrays["test_a"]) == 2
    assert arrays["train_a"].shape[1:] == (32, 32, 3)
    assert (arrays["train_b"] == 200).all() and arrays["test_a"][1].max() == 10


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing written


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            {"trainA": [(32, 32)] * 3, "trainB": [(32, 32)] * 2, "testA": [(32, 32)], "testB": [(32, 32)]},
            "mismatched pair counts in {root}: trainA holds 3 images, trainB 2",
        ),
        (
            {
                "trainA": [(32, 32), (40, 32)],
                "trainB": [(32, 32)] * 2,
                "testA": [(32, 32)],
                "testB": [(32, 32)],
            },
            "domain trainA: trainA/001.png is 32x40 but trainA/000.png is 32x32",
        ),
        (
            {"trainA": [(32, 32)] * 2, "trainB": [], "testA": [(32, 32)], "testB": [(32, 32)]},
            "domain folder trainB of {root} holds no images",
        ),
    ],
    ids=["mismatched pairs", "sizes differ", "empty domain"],
)
def test_bad_domains_fail_in_one_line_before_anything_is_written(tmp_path, layout, message):
    root = _domain_folders(tmp_path / "data", layout)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GdlError) as err:
        vectorize_domains(
            _params(data_source=str(root)), StepContext({}, out, inputs={"data": root}), paired=True
        )
    assert message.format(root=root) in str(err.value) and "\n" not in str(err.value)
    assert list(out.iterdir()) == []


def _leftovers(project) -> set[str]:
    data = project / "data"
    return {
        str(p.relative_to(data))
        for p in data.rglob("*")
        if p.is_file() and not p.name.endswith(".gdl-lock") and p.relative_to(data).parts[0] != "raw"
    }


def test_an_empty_domain_through_the_pipeline_leaves_nothing(project):
    root = _domain_folders(
        project / "mine", {"trainA": [(32, 32)] * 2, "trainB": [(32, 32)], "testA": [(32, 32)], "testB": []}
    )
    (root / "testB" / "notes.txt").write_text("no images here")
    with pytest.raises(GdlError, match=f"{root} has no held-out images: add testA and testB folders") as err:
        run_steps("cyclegan", dataset="horse2zebra", data_source=str(root))
    assert "\n" not in str(err.value) and _leftovers(project) == set()


def test_an_archive_with_an_escaping_member_fails_in_one_line_and_leaves_nothing(project):
    archive = project / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("trainA/a.png", png_bytes(_image(32, 32)))
        zf.writestr("../../trainB/b.png", png_bytes(_image(32, 32)))
    with pytest.raises(GdlError, match="member '../../trainB/b.png' escapes the target folder") as err:
        run_steps("pix2pix", dataset="facades", data_source=str(archive))
    assert "\n" not in str(err.value) and _leftovers(project) == set()
    assert not list(project.rglob("b.png"))
    assert not (project / "data" / "raw" / "facades").exists()  # no slot, lock or empty folder left


def test_pairs_that_are_not_side_by_side_are_refused(tmp_path):
    root = tmp_path / "pairs"
    root.mkdir()
    for i in range(3):
        save_png(root / f"{i}.png", _image(32, 40, i))
    with pytest.raises(GdlError, match=r"pair image \d.png is 40x32; side-by-side pairs are twice as wide"):
        folder_domains(root, _params(), paired=True)


# ---------------------------------------------------------------------------------------------
# Networks and scores


def test_the_unet_keeps_the_size_and_the_patchgan_scores_sixteen_pixel_patches():
    g = build_unet_generator(32, gf=4)
    x = RNG.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    y = g(x).numpy()
    assert y.shape == x.shape and np.abs(y).max() <= 1
    assert build_patchgan(64, df=4, channels=6)(np.zeros((1, 64, 64, 6), np.float32)).shape == (1, 4, 4, 1)
    with pytest.raises(GdlError, match="multiple of 16"):
        build_unet_generator(40)


def test_scores_rank_a_closer_translation_higher():
    truth = _image(32, 32, 1)
    noisy = np.clip(truth.astype(int) + RNG.integers(-20, 21, truth.shape), 0, 255).astype(np.uint8)
    same = scores(truth[None], truth[None])
    assert same["l1"] == 0 and same["ssim"] == pytest.approx(1.0) and same["psnr"] == 100.0
    close, far = scores(noisy[None], truth[None]), scores(_image(32, 32, 9)[None], truth[None])
    assert close["l1"] < far["l1"] and close["psnr"] > far["psnr"] and close["ssim"] > far["ssim"]


def test_a_facades_like_archive_is_extracted_safely_and_split_into_paired_domains(project):
    """pix2pix's release layout (facades/{train,val,test}/N.jpg, photo left, labels right) through
    the real download (safe extraction) and vectorize steps."""
    import io
    import tarfile

    from flows.config import resolve_params
    from tasks import download, vectorize

    archive = project / "facades.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 3), ("val", 1), ("test", 2)):
            for i in range(n):
                data = png_bytes(
                    np.concatenate([_image(40, 40, i), np.full((40, 40, 3), 7, np.uint8)], axis=1)
                )
                info = tarfile.TarInfo(f"facades/{split}/{i + 1}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    params = resolve_params(
        "pix2pix", None, {"pix2pix.dataset": "facades", "pix2pix.data_source": str(archive)}
    )
    raw = download.run("pix2pix", params, {})
    processed = vectorize.run("pix2pix", params, {"download": raw})
    out = project / processed["dir"]
    domains, meta = load_domains(out), load_meta(out)
    assert meta["counts"] == {"train_a": 4, "train_b": 4, "test_a": 2, "test_b": 2}
    assert meta["domains"] == ["domain A", "domain B"] and meta["test_paired"]
    assert (domains["train_b"] == 7).all() and not (domains["train_a"] == 7).all()
    assert meta["files"][-1] == "facades/test/2.png"


def test_edge_map_floor_drops_weak_edges_and_blur_ignores_grain():
    photo = np.full((24, 24, 3), 100, np.uint8)
    photo[:, 12:] = 220  # one strong edge
    photo[5, 3] = 112  # a speck of grain, 8% of the edge's contrast
    plain, clean = edge_map(photo), edge_map(photo, blur=1.0, floor=0.25)
    assert plain[4:7, 2:5].min() < 255, "without a floor the speck draws a grey mark"
    assert clean[:, :8].min() == 255, "with blur and a floor it is gone"
    assert clean[:, 11:13].max() < 100, "the real edge is still a dark line"


def test_scores_are_the_textbook_formulas_on_a_known_pair():
    truth = np.zeros((2, 16, 16, 3), np.uint8)
    predicted = np.full_like(truth, 51)  # 0.2 on a 0..1 scale everywhere
    found = scores(predicted, truth)
    assert found["l1"] == pytest.approx(0.2, abs=1e-6)
    # PSNR on the 0..1 scale: 10 log10(1 / MSE), MSE = 0.04 (a 0..255 max_val gives ~62 dB).
    assert found["psnr"] == pytest.approx(10 * np.log10(1 / 0.04), abs=1e-3)
