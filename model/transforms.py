"""Image loading and the preprocessing that turns images into network input.

Every network input goes through `prepare_satellite`, `prepare_ground` or `prepare_photo`, which
follow the `Preprocessing` stored with the weights: cv2 INTER_AREA resize (as the original),
channel order ("BGR" for the original Caffe-style weights), subtraction of the per-channel mean
and division by `std` on the 0-255 scale, HWC -> CHW float32.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from model.config import Preprocessing

# Refuse anything larger before decoding (a 50 Mpx RGB image is already 150 MB of pixels).
MAX_PIXELS = 50_000_000
# Satellite crop augmentation of the original: a centre crop of side c happens when
# c > int(0.683 * size); for 750 px tiles that is c > 512, the network input size.
CROP_THRESHOLD = 0.683
# A function (width, height) -> (width, height): the size an image of the given displayed size
# will be resized to before it reaches the network (see `input_size`).
SizeFor = Callable[[int, int], tuple[int, int]]
# EXIF orientations whose display turns the stored image by 90 degrees (width and height swap).
_TURNED_ORIENTATIONS = (5, 6, 7, 8)


class ImageLoadError(ValueError):
    """An image is missing, undecodable, truncated or too large. The message names the source."""


def load_image_rgb(src: str | Path | bytes, fit: SizeFor | None = None) -> np.ndarray:
    """Read and fully decode an image file (or its bytes) -> (H, W, 3) uint8 RGB.

    The one decoder of the project: training, evaluation, the indexer and (through
    `decode_open_image`, after its upload checks) the service get their pixels here. Palette,
    grey, alpha, CMYK and 16-bit images become 8-bit RGB (alpha is dropped, 16-bit values are
    scaled by 1/257); the EXIF orientation of photos is applied. Raises ImageLoadError naming the
    file when it is missing, not an image, truncated, or over MAX_PIXELS (checked from the header,
    before decoding). Relies on Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False.

    With `fit` (the size the image will be resized to, see `reduce_jpeg_decode`) a large JPEG is
    decoded at 1/2, 1/4 or 1/8 of its size when that is still at least as large.
    """
    name = "<image bytes>" if isinstance(src, bytes) else str(src)
    if not isinstance(src, bytes) and not Path(src).is_file():
        raise ImageLoadError(f"image file not found: {name}")
    fp = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        # Image.open reads only the header; Pillow's own bomb check there (an error above about
        # 179 Mpx) is a backstop to the stricter limit of `decode_open_image`, applied before any
        # decoding.
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        raise ImageLoadError(f"cannot decode image {name}: {exc}") from exc
    with im:
        return decode_open_image(im, fit, name)


def decode_open_image(im: Image.Image, fit: SizeFor | None = None, name: str = "<image bytes>") -> np.ndarray:
    """Decode an image that `Image.open` has opened (header read, no pixels yet) -> (H, W, 3)
    uint8 RGB, as `load_image_rgb` describes; `name` names it in errors.

    For a caller that has already opened the image to check its header (the service's uploads),
    so that it is not opened twice. Raises ImageLoadError when it is over MAX_PIXELS or cannot be
    decoded (the underlying error is its `__cause__`). The image is transposed in place.
    """
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageLoadError(f"{name}: {w}x{h} px exceeds the {MAX_PIXELS:,} pixel limit")
    try:
        if fit is not None:
            reduce_jpeg_decode(im, fit)
        im.load()  # full decode: a truncated file fails here
        ImageOps.exif_transpose(im, in_place=True)  # no copy; nothing when upright
        return _to_rgb_uint8(im)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"cannot decode image {name}: {exc}") from exc


def reduce_jpeg_decode(im: Image.Image, fit: SizeFor) -> None:
    """Before `im.load()`: let a JPEG decode at the smallest of 1/1, 1/2, 1/4, 1/8 of its size that
    is still at least `fit(width, height)` in both directions (sizes as displayed, after the EXIF
    orientation). Other formats are left as they are.

    The decoder then averages whole DCT blocks instead of producing every pixel, several times
    faster for photos from phones (12 Mpx: about 120 ms -> 35 ms here), and the INTER_AREA resize
    that follows still only shrinks. Training, evaluation and the service all call it with the
    same `input_size`, so the network sees the same pixels everywhere.
    """
    width, height = im.size
    turned = im.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED_ORIENTATIONS
    target_w, target_h = fit(*((height, width) if turned else (width, height)))
    if im.format == "JPEG":
        im.draft(im.mode, (target_h, target_w) if turned else (target_w, target_h))


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grey: scale to 8 bits instead of letting convert("RGB") clip at 255.
        grey = np.asarray(im, dtype=np.float64) / 257.0
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if im.mode == "F":
        grey8 = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if im.mode == "RGB":
        return np.asarray(im)  # one copy of the pixels, no converted image in between
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")  # resolves palette transparency before alpha is dropped
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"{what} must be an (H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {rgb.shape}")


def _resize_area(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb  # the original feeds native-size panoramas without resampling
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


# Source RGB plane of each model input channel.
_CHANNEL_SOURCES = {"BGR": (2, 1, 0), "RGB": (0, 1, 2)}


def normalise_batch(pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(b, H, W, 3) uint8 RGB -> (b, 3, H, W) float32 in prep's channel order, (x - mean) / std.

    Each output channel is written once, by a float32 subtraction straight from its uint8 plane
    (then a division unless std is 1): the values of float32(x) - float32(mean), / float32(std),
    without the whole-image float copy, the transposing copy and their temporaries (the request
    path and the indexer run this for every image).
    """
    sources = _CHANNEL_SOURCES.get(prep.channel_order)
    if sources is None:
        raise ValueError(f"unknown channel_order {prep.channel_order!r}; expected 'BGR' or 'RGB'")
    b, height, width = pixels.shape[:3]
    out = np.empty((b, 3, height, width), dtype=np.float32)
    for c, src in enumerate(sources):
        np.subtract(pixels[..., src], np.float32(prep.mean[c]), out=out[:, c], dtype=np.float32)
        if prep.std[c] != 1.0:  # dividing by 1 changes nothing; skip the pass
            np.divide(out[:, c], np.float32(prep.std[c]), out=out[:, c])
    return torch.from_numpy(out)


def _normalise(rgb: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 (`normalise_batch` of one image)."""
    return normalise_batch(rgb[None], prep)[0]


def satellite_pixels(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(h, w, 3) uint8 RGB satellite crop -> (S, S, 3) uint8, S = prep.sat_size: the resize of
    `prepare_satellite` (cv2 INTER_AREA over the whole crop), before normalisation."""
    _check_rgb(rgb, "satellite image")
    return _resize_area(rgb, prep.sat_size, prep.sat_size)


def prepare_satellite(rgb: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(h, w, 3) uint8 RGB satellite crop -> (3, S, S) float32, S = prep.sat_size.

    The whole crop is resized (cv2 INTER_AREA) to S x S, as the original's test path does.
    """
    return _normalise(satellite_pixels(rgb, prep), prep)


def input_size(
    width: int, height: int, prep: Preprocessing, kind: str, fov_deg: float = 90.0
) -> tuple[int, int]:
    """(width, height) that `prepare_ground` (kind "panorama") or `prepare_photo` (kind "photo",
    with its fov_deg) resizes a width x height image to."""
    if kind == "panorama":
        return prep.grd_size[1], prep.grd_size[0]
    if kind == "photo":
        if prep.pano_elevation_deg is not None:
            return _pinhole_scaled_size(width, height, prep.grd_size, prep.pano_elevation_deg, fov_deg)
        return _photo_size(width, height, prep.grd_size[1], fov_deg)
    raise ValueError(f"kind must be 'panorama' or 'photo', got {kind!r}")


def _photo_size(width: int, height: int, pano_width: int, fov_deg: float) -> tuple[int, int]:
    """A photo spans fov_deg/360 of the panorama's width; its height keeps the aspect ratio."""
    w = max(1, round(pano_width * fov_deg / 360.0))
    return w, max(1, round(w * height / width))


def prepare_ground(rgb: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(h, w, 3) uint8 RGB equirectangular panorama -> (3, H, W) float32, (H, W) = prep.grd_size.

    Resized with cv2 INTER_AREA when its size differs (CVUSA panoramas at the paper preset's
    224x1232 pass through unchanged, as in the original).
    """
    _check_rgb(rgb, "ground panorama")
    height, width = prep.grd_size
    return _normalise(_resize_area(rgb, height, width), prep)


def prepare_photo(rgb: np.ndarray, prep: Preprocessing, fov_deg: float = 90.0) -> torch.Tensor:
    """(h, w, 3) uint8 RGB perspective photo (level, horizontal field of view fov_deg) -> (3, H, W)
    float32 panorama-shaped input, the photo's left edge at column 0 (its heading is unknown, so
    no position is better than another). Every other pixel is 0, i.e. the mean colour after
    normalisation.

    When the preprocessing knows the panoramas' elevation span (`pano_elevation_deg`), the photo
    is reprojected as the pinhole image it is into that equirectangular geometry: each canvas
    pixel looks up the photo pixel its direction falls on. Otherwise it is scaled as a crop of a
    panorama would be (`prepare_pano_crop`).
    """
    if prep.pano_elevation_deg is None:
        return prepare_pano_crop(rgb, prep, fov_deg)
    _check_rgb(rgb, "photo")
    _check_fov(fov_deg)
    return _reproject_pinhole(rgb, prep, fov_deg, prep.pano_elevation_deg)


def prepare_pano_crop(rgb: np.ndarray, prep: Preprocessing, fov_deg: float) -> torch.Tensor:
    """(h, w, 3) uint8 RGB crop of an equirectangular panorama, fov_deg wide and as tall as the
    panorama -> (3, H, W) float32 canvas: scaled so that its width spans fov_deg/360 of W (height
    keeping the aspect ratio), centred vertically (rows beyond the canvas clipped), placed from
    column 0; every other pixel 0."""
    _check_rgb(rgb, "photo")
    _check_fov(fov_deg)
    height, width = prep.grd_size
    w, h = _photo_size(rgb.shape[1], rgb.shape[0], width, fov_deg)
    photo = _normalise(_resize_area(rgb, h, w), prep)  # (3, h, w)
    canvas = torch.zeros(3, height, width)
    top = height // 2 - h // 2
    src0, dst0 = max(0, -top), max(0, top)
    rows = min(h - src0, height - dst0)
    canvas[:, dst0 : dst0 + rows, :w] = photo[:, src0 : src0 + rows, :]
    return canvas


def _check_fov(fov_deg: float) -> None:
    if not 0.0 < fov_deg <= 360.0:
        raise ValueError(f"fov_deg must be in (0, 360], got {fov_deg}")


# A pinhole image cannot cover 180 degrees: wider fields of view are taken as this.
MAX_PINHOLE_FOV_DEG = 179.0


def _focal_px(width: int, fov_deg: float) -> float:
    """Focal length in pixels of a level pinhole image `width` pixels wide."""
    return (width / 2) / math.tan(math.radians(min(fov_deg, MAX_PINHOLE_FOV_DEG)) / 2)


def _pinhole_scaled_size(
    width: int, height: int, grd_size: tuple[int, int], span: tuple[float, float], fov_deg: float
) -> tuple[int, int]:
    """The photo resized so that, at its centre, a pixel covers the canvas's angle per pixel in
    each direction (the step before the reprojection samples it)."""
    (rows, cols), (top, bottom), focal = grd_size, span, _focal_px(width, fov_deg)
    sx = cols / (2 * math.pi) / focal
    sy = rows / math.radians(top - bottom) / focal
    return max(1, round(width * sx)), max(1, round(height * sy))


def _reproject_pinhole(
    rgb: np.ndarray, prep: Preprocessing, fov_deg: float, span: tuple[float, float]
) -> torch.Tensor:
    """See `prepare_photo`. Canvas column c looks (c + 0.5) * 360 / W - fov_deg / 2 degrees right of
    the photo's axis, row r at top - (r + 0.5) * (top - bottom) / H degrees of elevation; a level
    pinhole photo of focal length f (pixels) shows direction (az, el) at x = f tan(az),
    y = -tan(el) sqrt(f^2 + x^2) from its centre. Sampled bilinearly from the photo resized to
    about the canvas's resolution (`_pinhole_scaled_size`), so that the lookup does not alias."""
    (rows, cols), (top, bottom) = prep.grd_size, span
    fov = min(fov_deg, MAX_PINHOLE_FOV_DEG)
    small = _resize_area(
        rgb, *_pinhole_scaled_size(rgb.shape[1], rgb.shape[0], prep.grd_size, span, fov)[::-1]
    )
    focal = _focal_px(rgb.shape[1], fov)
    sx, sy = small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]
    ncol = min(cols, math.ceil(fov / 360.0 * cols))
    az = np.radians((np.arange(ncol) + 0.5) * 360.0 / cols - fov / 2)
    el = np.radians(top - (np.arange(rows) + 0.5) * (top - bottom) / rows)
    x = focal * np.tan(az)  # (ncol,) photo pixels right of its centre
    y = -np.tan(el)[:, None] * np.sqrt(focal**2 + x[None, :] ** 2)  # (rows, ncol) below it
    map_x = np.broadcast_to(x * sx + small.shape[1] / 2 - 0.5, y.shape).astype(np.float32)
    map_y = (y * sy + small.shape[0] / 2 - 0.5).astype(np.float32)
    inside = (map_x >= -0.5) & (map_x <= small.shape[1] - 0.5)
    inside &= (map_y >= -0.5) & (map_y <= small.shape[0] - 0.5)
    warped = cv2.remap(small, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    canvas = np.zeros((3, rows, cols), dtype=np.float32)
    canvas[:, :, :ncol] = _normalise(warped, prep).numpy() * inside[None]
    return torch.from_numpy(canvas)


def heading_inputs(grd: torch.Tensor, headings: int) -> torch.Tensor:
    """(b, 3, H, W) panorama-canvas inputs -> (headings * b, 3, H, W): all b turned by 0, then all
    by W / headings columns, and so on (row k * b + i is input i at heading step k).

    Turning a canvas by whole columns is the same as the photo having been taken facing
    360 * k / headings degrees further clockwise."""
    if headings < 1:
        raise ValueError(f"headings must be >= 1, got {headings}")
    if headings == 1:
        return grd
    width = grd.shape[-1]
    return torch.cat([torch.roll(grd, round(k * width / headings), dims=-1) for k in range(headings)])


def rotate_flip_pair(
    ground: np.ndarray, sat: np.ndarray, quarter_turns: int, mirror: bool, panorama: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Turn the whole scene of a pair about the camera and keep both views consistent.

    The satellite tile is mirrored east-west (when `mirror`) and then turned counter-clockwise by
    90 degrees `quarter_turns` times, so that it stays a north-up tile of a different, equally
    plausible world. The panorama (north at column 0, azimuth growing clockwise) gets the same
    transform: mirroring reverses its columns, and a counter-clockwise quarter turn brings what
    was east to north, i.e. rolls the columns left by a quarter of the width. Unlike
    `augment_satellite`, this keeps the north alignment that the views share, so the model still
    learns north-aligned matching while seeing eight variants of every pair. A perspective photo
    (`panorama=False`) has no known heading: a turn leaves it as it is, a mirror mirrors it.
    Returns new contiguous uint8 arrays.
    """
    _check_rgb(ground, "ground image")
    _check_rgb(sat, "satellite image")
    k = quarter_turns % 4
    if mirror:
        ground, sat = ground[:, ::-1], sat[:, ::-1]
    if panorama and k:
        ground = np.roll(ground, -round(k * ground.shape[1] / 4), axis=1)
    return np.ascontiguousarray(ground), np.ascontiguousarray(np.rot90(sat, k=k))


def augment_satellite(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The original's training augmentation of a square satellite tile (size s):

    1. c ~ U{1..s-2}; if c > int(0.683 s) keep the centred c x c square starting at int((s-c)/2),
       otherwise the whole tile (for s = 750: c > 512 with p = 236/748);
    2. rotate counter-clockwise by 90 r degrees, r ~ U{0..4} (identity with p = 0.4, as the
       original's inclusive randint(0, 4)).
    The rotation is exact (np.rot90) rather than the original's affine warp about (256, 256),
    which leaves a 1-pixel black row or column. Returns a new (h, w, 3) uint8 array.
    """
    _check_rgb(rgb, "satellite image")
    size = rgb.shape[0]
    if rgb.shape[1] != size or size < 3:
        raise ValueError(f"satellite augmentation needs a square tile of at least 3 px, got {rgb.shape}")
    c = int(rng.integers(1, size - 1))  # 1 .. size-2 inclusive
    if c > int(CROP_THRESHOLD * size):
        start = int((size - c) / 2)
        rgb = rgb[start : start + c, start : start + c]
    r = int(rng.integers(0, 5))  # 0 .. 4 inclusive
    return np.ascontiguousarray(np.rot90(rgb, k=r % 4))
