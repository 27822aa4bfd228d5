"""Image I/O for every image technique (Pillow + numpy): load, check, resize, save and lay out images.

Loading applies EXIF orientation and turns any Pillow mode into uint8 RGB or L (transparency is
composited onto white; 16-bit and float images are rescaled, not clipped). It refuses, with a one-line
`GdlError` naming the file, what should not be decoded: decompression bombs (checked from the header,
before any pixel is decoded), non-images, truncated files and degenerate sizes. Saving writes PNGs whose
bytes depend only on the pixels, so the pipeline's content hashes are stable. Grids with captions and
animated GIFs show sequences (octaves, training progress, interpolations) in reports.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from models.core.errors import GdlError
from models.core.files import write_bytes_atomic

# Raster formats we decode. Restricting Image.open to these keeps files from the internet away from
# Pillow's riskier plugins (EPS, for one, runs Ghostscript). "JPEG" includes camera MPO files, "PPM" PGM/PBM.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

_ORIENTATION = 0x0112  # EXIF tag; values 5..8 turn the picture by 90 degrees (width and height swap)
_TRANSPOSED = (5, 6, 7, 8)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


# ---------------------------------------------------------------------------------------------- loading


def _formats() -> list[str]:
    """FORMATS this Pillow build can open (Image.open fails outright on an unregistered name)."""
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def _pixel_limit(max_pixels: int | None) -> tuple[int | None, str]:
    """The tighter of Pillow's global limit and the caller's, with the name to quote in errors."""
    limits = []
    if Image.MAX_IMAGE_PIXELS:  # None (or 0) switches Pillow's check off
        limits.append((int(Image.MAX_IMAGE_PIXELS), "PIL.Image.MAX_IMAGE_PIXELS"))
    if max_pixels is not None:
        limits.append((int(max_pixels), "max_pixels"))
    return min(limits) if limits else (None, "")


def _too_big(origin: str, pixels: int | None, limit: int | None, name: str) -> GdlError:
    count = f"{pixels} pixels" if pixels is not None else "too many pixels"
    return GdlError(
        f"image {origin} has {count}, over the limit of {limit} ({name}); "
        "raise the limit only for files you trust"
    )


def _open(path: Path, max_pixels: int | None, min_side: int, origin: str) -> Image.Image:
    """Open the file (Pillow reads only the header) and check its size before any pixel is decoded."""
    if not path.is_file():
        raise GdlError(f"image {origin} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise GdlError(f"image {origin} is an empty file")
    limit, name = _pixel_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; the size check below turns that into an error
            # with a clearer message, so the warning itself is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=_formats())
    except Image.DecompressionBombError as exc:  # over 2x the limit: Pillow refuses in open()
        found = _BOMB_PIXELS.search(str(exc))
        raise _too_big(
            origin,
            int(found.group(1)) if found else None,
            Image.MAX_IMAGE_PIXELS,
            "PIL.Image.MAX_IMAGE_PIXELS",
        ) from None
    except UnidentifiedImageError:
        raise GdlError(f"{origin} is not an image in a supported format ({', '.join(FORMATS)})") from None
    except OSError as exc:
        raise GdlError(f"image {origin} cannot be read ({exc})") from None
    width, height = im.size
    if limit is not None and width * height > limit:
        im.close()
        raise _too_big(origin, width * height, limit, name)
    if width < min_side or height < min_side:
        im.close()
        raise GdlError(f"image {origin} is {width}x{height} pixels; at least {min_side}x{min_side} is needed")
    return im


def _decode(im: Image.Image, origin: str) -> None:
    """Decode the pixels of the current (first) frame; truncated or corrupt data is a GdlError."""
    try:
        with warnings.catch_warnings():
            # Some formats (ICO-like containers, TIFF pages) only learn their real size while loading.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_big(origin, None, Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise GdlError(f"image {origin} is truncated or corrupt ({exc})") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # broken EXIF blocks are common; they must not make a good picture unreadable
        return 1


def _grey_levels(im: Image.Image) -> Image.Image:
    """Wide greyscale (16-bit, 32-bit int, float) onto 8-bit "L", scaled rather than clipped.

    16-bit modes map 0..65535 onto 0..255 (divide by 257). "I" (how some 16-bit files open) does the
    same when its values fit in 0..65535. "F" maps 0..1 onto 0..255 and keeps 0..255 as it is. Anything
    else (negative values, wider ranges) is stretched from its own minimum..maximum onto 0..255.
    Non-finite floats count as 0.
    """
    x = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        x = x / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        x = x * 255.0
    elif not (im.mode == "F" and lo >= 0 and hi <= 255):
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    return Image.fromarray(np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8))


def _to_array(im: Image.Image, mode: str) -> np.ndarray:
    """Any Pillow mode to uint8 RGB (H, W, 3) or L (H, W)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _grey_levels(im)
    if im.mode == "La":  # premultiplied; Pillow converts it only to LA
        im = im.convert("LA")
    if im.mode in ("P", "PA", "RGBA", "RGBa", "LA") and (im.mode != "P" or "transparency" in im.info):
        # Composite onto white: dropping alpha would show whatever colour hides under transparent pixels.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(im.convert(mode))  # np.array, not asarray: callers get a writable array


def load_image(
    path: Path,
    mode: str = "RGB",
    max_pixels: int | None = None,
    min_side: int = 2,
    origin: str | None = None,
) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3) or L (H, W), with its EXIF orientation applied.

    Any Pillow mode is converted: palette and alpha images are composited onto white (not just stripped
    of alpha), CMYK and bilevel through Pillow, 16-bit and float greyscale rescaled (see `_grey_levels`).
    Animated images give their first frame. Refused with a GdlError naming `origin` (default: the path):
    files over `PIL.Image.MAX_IMAGE_PIXELS` or `max_pixels` (checked before decoding), non-images or
    formats outside FORMATS, empty, truncated or corrupt files, sides shorter than `min_side`.
    """
    if mode not in ("RGB", "L"):
        raise GdlError(f"load_image: mode {mode!r} is not valid; use 'RGB' or 'L'")
    path = Path(path)
    origin = origin or str(path)
    with _open(path, max_pixels, min_side, origin) as im:
        _decode(im, origin)
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block: keep the picture as stored
            upright = im
        return _to_array(upright, mode)


def check_image(
    path: Path, max_pixels: int | None = None, origin: str | None = None, min_side: int = 2
) -> dict[str, Any]:
    """Validate an image as `load_image` would, decoding its first frame fully (so truncation is caught)
    without keeping the pixels: {"format", "width", "height", "mode"} (width and height as displayed,
    i.e. after EXIF orientation; mode as stored)."""
    path = Path(path)
    origin = origin or str(path)
    with _open(path, max_pixels, min_side, origin) as im:
        _decode(im, origin)
        width, height = im.size
        if _orientation(im) in _TRANSPOSED:
            width, height = height, width
        return {"format": im.format, "width": width, "height": height, "mode": im.mode}


# --------------------------------------------------------------------------------------------- resizing


def _round_ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, in integers (floats misround sizes like 7.5), at least 1."""
    return max(1, (2 * numerator + denominator) // (2 * denominator))


def _side(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GdlError(f"resize: {what} must be a whole number of pixels, at least 1 (got {value!r})")
    return int(value)


def target_size(
    shape: tuple[int, ...],
    size: tuple[int, int] | None = None,
    height: int | None = None,
    width: int | None = None,
    max_side: int | None = None,
) -> tuple[int, int]:
    """The (height, width) `resize` produces for an image of `shape` (H, W, ...); see `resize`."""
    if sum(v is not None for v in (size, height, width, max_side)) != 1:
        raise GdlError("resize: give exactly one of size=(height, width), height=, width= or max_side=")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise GdlError(f"resize: the image is empty (shape {tuple(shape)})")
    if size is not None:
        if len(size) != 2:
            raise GdlError(f"resize: size must be (height, width) (got {size!r})")
        return _side(size[0], "size[0] (height)"), _side(size[1], "size[1] (width)")
    if height is not None:
        height = _side(height, "height")
        return height, _round_ratio(w * height, h)
    if width is not None:
        width = _side(width, "width")
        return _round_ratio(h * width, w), width
    longest = max(h, w)
    max_side = _side(max_side, "max_side")
    if longest <= max_side:  # already fits: never enlarged
        return h, w
    return _round_ratio(h * max_side, longest), _round_ratio(w * max_side, longest)


def resize(
    image: np.ndarray,
    size: tuple[int, int] | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    max_side: int | None = None,
    resample: str = "bicubic",
) -> np.ndarray:
    """A resized copy of a uint8 or float image, (H, W) or (H, W, C), of the same dtype.

    Give exactly one of: `size=(height, width)` (exact); `height=` or `width=` (the other side follows
    the aspect ratio, rounded half up, at least 1); `max_side=` (fit inside a max_side square keeping the
    aspect ratio; never enlarges, so an image that already fits comes back unchanged, as a copy).
    Floats are resized channel by channel in Pillow's 32-bit float mode, so values outside 0..255
    (preprocessed images, DeepDream octaves) survive; float64 goes through float32.
    `resample`: nearest, bilinear, bicubic (default) or lanczos.
    """
    if resample not in RESAMPLING:
        raise GdlError(f"resize: unknown resample {resample!r}; valid: {', '.join(RESAMPLING)}")
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise GdlError(f"resize: expected an (H, W) or (H, W, C) image (got shape {image.shape})")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise GdlError(f"resize: expected a uint8 or float image (got {image.dtype})")
    out_h, out_w = target_size(image.shape, size, height, width, max_side)
    if (out_h, out_w) == image.shape[:2]:
        return image.copy()
    method = RESAMPLING[resample]
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4):
        return np.array(Image.fromarray(image).resize((out_w, out_h), method))
    # Everything else one plane at a time: "L" for uint8, "F" for floats (no clipping to 0..255).
    planes = image[..., None] if image.ndim == 2 else image
    kind = np.uint8 if image.dtype == np.uint8 else np.float32
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=kind)).resize((out_w, out_h), method)
        )
        for c in range(planes.shape[2])
    ]
    result = np.stack(resized, axis=-1).astype(image.dtype)
    return result[..., 0] if image.ndim == 2 else result


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central height x width region (a view); an odd leftover pixel is cut from the bottom/right."""
    h, w = image.shape[:2]
    if not (1 <= height <= h and 1 <= width <= w):
        raise GdlError(f"center_crop: {height}x{width} does not fit in an image of {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise GdlError(f"to_float: expected a uint8 image (got {image.dtype})")
    return image.astype(np.float32) / np.float32(255.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float 0..1 -> uint8 0..255: scaled, rounded, clipped (NaN becomes 0)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- saving


def _picture(image: np.ndarray, what: str) -> np.ndarray:
    """A uint8 (H, W) or (H, W, 3) array, or an error saying what `what` needs."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise GdlError(f"{what} uint8 arrays (got {image.dtype}); deprocess first (e.g. to_uint8)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise GdlError(f"{what} images of shape {image.shape}: expected (H, W), (H, W, 1) or (H, W, 3)")
    return image


def _savable(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(_picture(image, "images are saved from")))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W), (H, W, 1) or (H, W, 3) array that depend only on the pixels.

    No time stamp, text or resolution chunks are written, and compression settings are fixed, so the
    same array gives the same bytes (for a given Pillow/zlib build).
    """
    buf = io.BytesIO()
    _savable(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(path: Path, image: np.ndarray) -> None:
    """Write `png_bytes(image)` atomically (readers never see half a file)."""
    write_bytes_atomic(Path(path), png_bytes(image))


# ---------------------------------------------------------------------------------------------- layouts


def _rgb(image: np.ndarray) -> np.ndarray:
    image = _picture(image, "layouts are made of")
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _colour(background: int | Sequence[int]) -> tuple[int, int, int]:
    values = (background,) * 3 if isinstance(background, (int, np.integer)) else tuple(background)
    if len(values) != 3 or not all(0 <= int(v) <= 255 for v in values):
        raise GdlError(f"background must be 0..255 or an (r, g, b) of 0..255 (got {background!r})")
    return int(values[0]), int(values[1]), int(values[2])


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """One line of `text` cut (with '...') to fit `width` pixels: long captions must not run into the
    next cell."""
    text = " ".join(str(text).split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    cols: int | None = None,
    pad: int = 2,
    background: int | Sequence[int] = 255,
    title: str | None = None,
) -> np.ndarray:
    """A uint8 RGB (H, W, 3) grid of uint8 images, row by row.

    Each cell is the size of the largest image (smaller ones centred on the background); greyscale is
    promoted to RGB. `cols` defaults to ceil(sqrt(n)) (and is capped at n). `pad` pixels separate cells
    and frame the grid. Optional one-line captions go in a band under each row, an optional title in a
    band on top, both in Pillow's built-in default font and cut with '...' to fit. Height is
    pad + title band + rows * (cell + caption band + pad); width is pad + cols * (cell + pad).
    """
    if not len(images):
        raise GdlError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise GdlError(f"image_grid: {len(captions)} captions for {len(images)} images; give one per image")
    if cols is not None and (isinstance(cols, bool) or cols < 1):
        raise GdlError(f"image_grid: cols must be at least 1 (got {cols!r})")
    if pad < 0:
        raise GdlError(f"image_grid: pad must be at least 0 (got {pad})")
    cells = [_rgb(im) for im in images]
    fill = _colour(background)
    ink = (0, 0, 0) if sum(fill) >= 3 * 128 else (255, 255, 255)  # text readable on any background
    cols = min(cols or math.ceil(math.sqrt(len(cells))), len(cells))
    rows = math.ceil(len(cells) / cols)
    cell_h = max(c.shape[0] for c in cells)
    cell_w = max(c.shape[1] for c in cells)
    font = ImageFont.load_default()  # bundled with Pillow: no font files to ship or find
    line_h = font.getbbox("Ag")[3] + 3
    caption_h = line_h if captions is not None else 0
    title_h = line_h if title else 0
    height = pad + title_h + rows * (cell_h + caption_h + pad)
    width = pad + cols * (cell_w + pad)
    canvas = Image.new("RGB", (width, height), fill)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), _fit_text(draw, title, font, width - 2 * pad), fill=ink, font=font)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        top = pad + title_h + r * (cell_h + caption_h + pad)
        left = pad + c * (cell_w + pad)
        canvas.paste(
            Image.fromarray(cell), (left + (cell_w - cell.shape[1]) // 2, top + (cell_h - cell.shape[0]) // 2)
        )
        if captions is not None:
            draw.text(
                (left, top + cell_h + 1), _fit_text(draw, captions[i], font, cell_w), fill=ink, font=font
            )
    return np.array(canvas)


def strip(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None, pad: int = 2) -> np.ndarray:
    """A sequence side by side in one row: `image_grid` with cols = len(frames)."""
    return image_grid(frames, captions, cols=max(1, len(frames)), pad=pad)


def animation_gif(
    frames: Sequence[np.ndarray],
    duration_ms: int = 300,
    loop: int = 0,
    captions: Sequence[str] | None = None,
) -> bytes:
    """An animated GIF of uint8 frames, each shown `duration_ms` (GIF keeps 10 ms steps); loop=0 loops
    forever.

    Frames of different sizes are padded, not resized: each is centred on a white canvas of the largest
    height and width, with its caption (if given) in a band underneath. Each frame gets its own
    256-colour palette (median cut, no dithering), so the bytes depend only on the frames. Pillow merges
    consecutive identical frames into one (adding their durations), so `n_frames` can be smaller than
    len(frames) when the picture does not change.
    """
    if not len(frames):
        raise GdlError("animation_gif needs at least one frame")
    if captions is not None and len(captions) != len(frames):
        raise GdlError(
            f"animation_gif: {len(captions)} captions for {len(frames)} frames; give one per frame"
        )
    if isinstance(duration_ms, bool) or duration_ms < 1 or loop < 0:
        raise GdlError(
            f"animation_gif: duration_ms must be at least 1 and loop at least 0 (got {duration_ms}, {loop})"
        )
    cells = [_rgb(f) for f in frames]
    h = max(c.shape[0] for c in cells)
    w = max(c.shape[1] for c in cells)
    pictures = []
    for i, cell in enumerate(cells):
        canvas = np.full((h, w, 3), 255, np.uint8)
        top, left = (h - cell.shape[0]) // 2, (w - cell.shape[1]) // 2
        canvas[top : top + cell.shape[0], left : left + cell.shape[1]] = cell
        if captions is not None:
            canvas = image_grid([canvas], [captions[i]], cols=1, pad=0)
        quantized = Image.fromarray(canvas).quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        pictures.append(quantized)
    buf = io.BytesIO()
    pictures[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=duration_ms,
        loop=loop,
        disposal=1,  # each frame covers the whole canvas: leave it in place, nothing to restore
    )
    return buf.getvalue()


GENERATED = "generated.npz"  # in a run's samples/: the images its quality metrics scored


def save_generated(folder: Path, images: np.ndarray, **arrays: np.ndarray) -> Path:
    """Keep the images a run's quality metrics scored, as uint8 arrays in `folder/generated.npz`
    (`images`, plus e.g. `labels`), so anyone can re-score them with their own tools
    (`numpy.load(path)["images"]`; no pickles). Written atomically and reproducibly: the same
    arrays give the same bytes."""
    import zipfile

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"generated images must be uint8, got {images.dtype}")
    buf = io.BytesIO()
    # np.savez stamps the zip members with the current time: members written by hand instead,
    # with a fixed date, so re-running a cached step re-makes identical bytes.
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in {"images": images, **arrays}.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path = Path(folder) / GENERATED
    write_bytes_atomic(path, buf.getvalue())
    return path
