"""Image I/O: orientation, modes, refusals, resizing, deterministic PNGs, grids and GIFs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from models.core import images
from models.core.errors import GdlError

RNG = np.random.default_rng(1)


def saved(path, im: Image.Image, **kw):
    im.save(path, **kw)
    return path


def png_chunks(blob: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at < len(blob):
        (length,) = struct.unpack(">I", blob[at : at + 4])
        kinds.append(blob[at + 4 : at + 8])
        at += 12 + length
    return kinds


def header_only_png(path, width: int, height: int):
    """A PNG whose header claims width x height pixels but that carries no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------------------------- loading


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:6, :6] = (255, 0, 0)  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = saved(tmp_path / "o.jpg", Image.fromarray(pixels), exif=exif.tobytes(), quality=95)
    loaded = images.load_image(path)
    assert loaded.shape == (40, 20, 3)
    assert loaded[2, -3, 0] > 200 and loaded[2, -3, 1] < 60  # now the top-right corner
    assert loaded[-3, 2, 0] < 60 and loaded[2, 2, 0] < 60  # and nowhere else
    info = images.check_image(path)
    assert (info["format"], info["width"], info["height"]) == ("JPEG", 20, 40)


def _palette_with_transparent_green() -> Image.Image:
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 1  # index 1 (green) is fully transparent
    return pal


@pytest.mark.parametrize(
    ("name", "make", "rgb", "grey"),
    [
        # half-transparent red over white is pink, not red
        ("rgba.png", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 128)), (255, 127, 127), 166),
        ("p.png", _palette_with_transparent_green, (255, 255, 255), 255),
        ("la.png", lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255), 255),
        ("la-opaque.png", lambda: Image.new("LA", (8, 8), (90, 255)), (90, 90, 90), 90),
        ("cmyk.tif", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0), 76),
        ("one.png", lambda: Image.new("1", (8, 8), 1), (255, 255, 255), 255),
        ("f.tif", lambda: Image.fromarray(np.full((8, 8), 0.5, np.float32)), (128, 128, 128), 128),
    ],
)
def test_every_mode_becomes_uint8_rgb_or_l(tmp_path, name, make, rgb, grey):
    path = saved(tmp_path / name, make())
    colour = images.load_image(path)
    assert colour.shape == (8, 8, 3) and colour.dtype == np.uint8
    np.testing.assert_allclose(colour[0, 0], rgb, atol=2)
    mono = images.load_image(path, "L")
    assert mono.shape == (8, 8) and mono.dtype == np.uint8
    assert abs(int(mono[0, 0]) - grey) <= 2


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))
    path = saved(tmp_path / "16.png", Image.fromarray(ramp))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    grey = images.load_image(path, "L")
    assert grey.min() == 0 and grey.max() == 255 and np.all(np.diff(grey[0].astype(int)) >= 0)
    assert len(np.unique(grey)) > 60  # clipping would leave almost everything at 255
    # The scale is absolute (65535 -> 255), not stretched per image: a dark picture stays dark.
    dark = saved(tmp_path / "dark.tif", Image.fromarray(np.full((4, 4), 32896, np.int32), "I"))
    assert np.all(images.load_image(dark, "L") == 128)


def test_animated_images_give_their_first_frame(tmp_path):
    red, blue = Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))
    path = saved(tmp_path / "a.gif", red, save_all=True, append_images=[blue])
    np.testing.assert_array_equal(images.load_image(path)[3, 3], (255, 0, 0))


def test_images_over_max_image_pixels_are_refused(tmp_path, monkeypatch):
    warned = saved(tmp_path / "big.png", Image.new("RGB", (80, 80)))  # 1.3x the limit: Pillow only warns
    huge = saved(tmp_path / "huge.png", Image.new("RGB", (200, 200)))  # 8x: Pillow raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    for path, pixels in ((warned, 6400), (huge, 40000)):
        for call in (images.load_image, images.check_image):
            with pytest.raises(
                GdlError, match=rf"has {pixels} pixels, over the limit of 5000 \(PIL.Image.MAX_"
            ):
                call(path)


def test_the_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    # Within the limits, a header with no pixel data is a decode error ...
    empty = header_only_png(tmp_path / "empty.png", 20, 20)
    with pytest.raises(GdlError, match="truncated or corrupt"):
        images.load_image(empty)
    # ... so the same file over a limit giving the limit's message shows nothing was decoded.
    with pytest.raises(GdlError, match=r"has 400 pixels, over the limit of 100 \(max_pixels\)"):
        images.load_image(empty, max_pixels=100)
    with pytest.raises(GdlError, match=r"has 3600000000 pixels, over the limit of 89478485 \(PIL"):
        images.check_image(header_only_png(tmp_path / "bomb.png", 60000, 60000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(GdlError, match="has 400 pixels, over the limit of 300"):
        images.load_image(empty)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is text, not pixels", "is not an image in a supported format"),
        (b"", "is an empty file"),
        ("truncated", "truncated or corrupt"),
        ("tiny", "is 1x1 pixels; at least 2x2 is needed"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content == "truncated":
        blob = images.png_bytes(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(blob[: len(blob) // 2])
    elif content == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    else:
        path.write_bytes(content)
    for call in (images.load_image, images.check_image):
        with pytest.raises(GdlError, match=message) as err:
            call(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GdlError, match="photos.zip: cat.png"):
        images.load_image(path, origin="photos.zip: cat.png")


def test_check_image_reports_format_size_and_mode(tmp_path):
    path = saved(tmp_path / "p.png", Image.new("LA", (7, 5)))
    assert images.check_image(path) == {"format": "PNG", "width": 7, "height": 5, "mode": "LA"}


# ---------------------------------------------------------------------------------------------- resizing


def test_resize_by_height_or_width_keeps_the_aspect_ratio():
    cat = photos.chelsea()
    assert cat.shape == (300, 451, 3)
    assert images.resize(cat, height=400).shape == (400, 601, 3)  # the book's style-transfer height
    assert images.resize(cat, width=100).shape == (67, 100, 3)
    assert images.resize(np.zeros((2, 5), np.uint8), height=3).shape == (3, 8)  # 7.5 rounds up
    assert images.resize(np.zeros((100, 1), np.uint8), height=10).shape == (10, 1)  # at least 1


def test_resize_to_an_exact_size_or_inside_a_square():
    cat = photos.chelsea()
    assert images.resize(cat, (32, 48)).shape == (32, 48, 3)
    assert images.resize(cat, max_side=90).shape == (60, 90, 3)
    small = images.resize(cat, max_side=1000)  # never enlarged
    np.testing.assert_array_equal(small, cat)
    assert small is not cat
    assert images.resize(cat[..., :1], size=(10, 10)).shape == (10, 10, 1)


def test_resizing_floats_keeps_values_outside_0_255():
    ramp = np.tile(np.linspace(-300.0, 600.0, 40, dtype=np.float32), (30, 1))
    planes = np.stack([ramp, -ramp, ramp * 0.5], axis=-1)
    out = images.resize(planes, height=15, resample="bilinear")
    assert out.shape == (15, 20, 3) and out.dtype == np.float32
    assert out[..., 0].min() < -250 and out[..., 0].max() > 550 and out[..., 1].min() < -550
    grey = images.resize(ramp.astype(np.float64), size=(10, 10))
    assert grey.shape == (10, 10) and grey.dtype == np.float64 and grey.min() < -200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 10, "width": 10},
        {},
        {"height": 0},
        {"width": -3},
        {"height": 10.5},
        {"size": (10,)},
        {"max_side": 10, "resample": "sinc"},
    ],
)
def test_resize_rejects_invalid_arguments(kwargs):
    with pytest.raises(GdlError, match="resize"):
        images.resize(np.zeros((20, 20, 3), np.uint8), **kwargs)


def test_resize_rejects_integer_images_other_than_uint8():
    with pytest.raises(GdlError, match="uint8 or float"):
        images.resize(np.zeros((20, 20), np.int32), height=10)


def test_center_crop_and_float_conversions():
    astronaut = photos.astronaut()
    crop = images.center_crop(astronaut, 224, 100)
    np.testing.assert_array_equal(crop, astronaut[144:368, 206:306])
    with pytest.raises(GdlError, match="does not fit"):
        images.center_crop(astronaut, 513, 10)
    x = images.to_float(astronaut)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(images.to_uint8(x), astronaut)
    np.testing.assert_array_equal(
        images.to_uint8(np.array([-0.5, 0.499 / 255, 0.501 / 255, 2.0])), [0, 0, 1, 255]
    )


# ------------------------------------------------------------------------------------------------ saving


def test_saved_pngs_are_deterministic_and_round_trip(tmp_path):
    picture = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    images.save_png(tmp_path / "a.png", picture)
    images.save_png(tmp_path / "sub" / "b.png", picture.copy())
    blob = (tmp_path / "a.png").read_bytes()
    assert blob == (tmp_path / "sub" / "b.png").read_bytes() == images.png_bytes(picture)
    assert png_chunks(blob) == [b"IHDR", b"IDAT", b"IEND"]  # no time stamp or text chunks
    np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"), picture)
    grey = picture[..., 0]
    images.save_png(tmp_path / "g.png", grey[..., None])
    np.testing.assert_array_equal(images.load_image(tmp_path / "g.png", "L"), grey)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "deprocess first"),
        (np.zeros((4, 4), np.uint16), "deprocess first"),
        (np.zeros((4, 4, 4), np.uint8), "expected"),
    ],
)
def test_save_png_refuses_what_is_not_a_uint8_picture(tmp_path, array, message):
    with pytest.raises(GdlError, match=message):
        images.save_png(tmp_path / "x.png", array)
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------------------------- layouts


def test_grid_shape_follows_cells_cols_and_pad():
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    grey = np.full((6, 8), 40, np.uint8)
    grid = images.image_grid([rgb, grey, rgb], cols=2, pad=2)
    assert grid.shape == (2 + 2 * (10 + 2), 2 + 2 * (12 + 2), 3) and grid.dtype == np.uint8
    assert images.image_grid([rgb] * 5).shape == (2 + 2 * 12, 2 + 3 * 14, 3)  # cols ~ sqrt(5) = 3
    # The smaller greyscale picture is centred in its cell, promoted to RGB, background around it.
    cell = grid[2:12, 16:28]
    np.testing.assert_array_equal(cell[2:8, 2:10], 40)
    assert np.all(cell[:2] == 255) and np.all(cell[:, :2] == 255)
    np.testing.assert_array_equal(grid[2:12, 2:14], rgb)


def test_captions_and_title_make_the_grid_taller():
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    plain = images.image_grid([rgb, rgb, rgb], cols=2)
    captioned = images.image_grid([rgb, rgb, rgb], ["a", "b", "a caption far too long"], cols=2)
    titled = images.image_grid([rgb, rgb, rgb], cols=2, title="Octaves")
    assert captioned.shape[0] > plain.shape[0] and captioned.shape[1] == plain.shape[1]
    assert titled.shape[0] > plain.shape[0] and titled.shape[1] == plain.shape[1]
    band = captioned[12:24, 2:14]  # under the first picture: dark caption ink on white
    assert band.min() < 128


def test_grid_rejects_mismatched_captions_and_empty_lists():
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(GdlError, match="2 captions for 3 images"):
        images.image_grid([rgb, rgb, rgb], ["a", "b"])
    with pytest.raises(GdlError, match="at least one"):
        images.image_grid([])
    with pytest.raises(GdlError, match="deprocess first"):
        images.image_grid([rgb.astype(np.float32)])


def test_strip_is_one_row():
    frames = [np.zeros((10, 12, 3), np.uint8)] * 4
    assert images.strip(frames).shape == (2 + 12, 2 + 4 * 14, 3)


def test_animations_are_gifs_with_every_frame_and_stable_bytes():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]
    frames = [np.full((16, 16, 3), c, np.uint8) for c in colours]
    frames.append(np.zeros((10, 20), np.uint8))  # another size, greyscale
    blob = images.animation_gif(frames, 200)
    assert blob == images.animation_gif([f.copy() for f in frames], 200)
    with Image.open(io.BytesIO(blob)) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.size == (20, 16)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        for i, colour in enumerate(colours):
            gif.seek(i)
            np.testing.assert_array_equal(np.asarray(gif.convert("RGB"))[8, 10], colour)
        gif.seek(4)
        last = np.asarray(gif.convert("RGB"))
        np.testing.assert_array_equal(last[8, 10], (0, 0, 0))
        np.testing.assert_array_equal(last[1, 10], (255, 255, 255))  # padded, not stretched
    captioned = images.animation_gif(frames, captions=[str(i) for i in range(5)])
    with Image.open(io.BytesIO(captioned)) as gif:
        assert gif.n_frames == 5 and gif.size[1] > 16
    with pytest.raises(GdlError, match="1 captions for 5 frames"):
        images.animation_gif(frames, captions=["x"])
