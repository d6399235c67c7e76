"""Image loading (formats, truncation, bombs) and the prepare_* / augment_satellite transforms."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

import model.transforms as transforms
from model.backbone import torchvision_preprocessing
from model.config import Preprocessing
from model.transforms import (
    ImageLoadError,
    augment_satellite,
    input_size,
    load_image_rgb,
    prepare_ground,
    prepare_photo,
    prepare_satellite,
    rotate_flip_pair,
)

BGR_PREP = Preprocessing(sat_size=2, grd_size=(8, 40))
COLOUR = (200, 100, 50)  # R, G, B
# Caffe means are B 103.939, G 116.779, R 123.6; BGR order puts blue first.
COLOUR_BGR_NORMALISED = (50 - 103.939, 100 - 116.779, 200 - 123.6)


def _uniform(h: int, w: int, colour=COLOUR) -> np.ndarray:
    return np.tile(np.array(colour, dtype=np.uint8), (h, w, 1))


def test_load_rgb_jpeg_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(load_image_rgb(path), rgb)
    np.testing.assert_array_equal(load_image_rgb(path.read_bytes()), rgb)
    assert load_image_rgb(str(path)).dtype == np.uint8


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("L", 77, (77, 77, 77)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_load_converts_modes_to_rgb(tmp_path, mode, value, expected):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new(mode, (3, 2), value).save(path)
    out = load_image_rgb(path)
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[0, 0], expected, atol=1)


def test_load_palette_and_16_bit(tmp_path):
    pal = Image.new("P", (2, 2))
    pal.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    out = load_image_rgb(tmp_path / "p.png")
    assert tuple(out[0, 1]) == (9, 99, 199) and tuple(out[0, 0]) == (0, 0, 0)
    grey16 = np.array([[65535, 25700], [0, 257]], dtype=np.uint16)  # 25700 = 100 * 257
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = load_image_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[:, :, 0], [[255, 100], [0, 1]])
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_load_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (8, 4), COLOUR).save(tmp_path / "o.jpg", exif=exif)
    assert load_image_rgb(tmp_path / "o.jpg").shape == (8, 4, 3)


# How each EXIF orientation's stored pixels are turned to be displayed (array rows x columns).
_DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(_DISPLAYED))
@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_load_turns_every_exif_orientation_in_every_mode(orientation: int, mode: str) -> None:
    rgb = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    stored = Image.fromarray(rgb).convert(mode)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)
    want = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(load_image_rgb(buf.getvalue()), _DISPLAYED[orientation](want))


def test_decode_open_image_decodes_what_the_caller_opened(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(transforms.decode_open_image(im, name="a.png"), rgb)
    cut = (tmp_path / "a.png").read_bytes()[:-30]
    with (
        Image.open(io.BytesIO(cut)) as im,
        pytest.raises(ImageLoadError, match="cannot decode image a.png") as err,
    ):
        transforms.decode_open_image(im, name="a.png")
    assert isinstance(err.value.__cause__, OSError)  # the reason, for callers with their own message


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match=f"not found: {missing}"):
        load_image_rgb(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match=f"cannot decode image {text}"):
        load_image_rgb(text)
    with pytest.raises(ImageLoadError, match="<image bytes>"):
        load_image_rgb(b"\x00\x01garbage")


def test_load_detects_truncated_jpeg(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(rgb).save(full, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert load_image_rgb(full).shape == (64, 64, 3)
    with pytest.raises(ImageLoadError, match=f"{cut}.*truncated"):
        load_image_rgb(cut)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but that holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_load_refuses_image_bomb_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(10_000, 6_000))  # 60 Mpx claimed, nothing to decode
    with pytest.raises(ImageLoadError, match=f"{bomb}: 10000x6000 px exceeds"):
        load_image_rgb(bomb)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(40_000, 40_000))  # beyond Pillow's own bomb limit too
    with pytest.raises(ImageLoadError, match=str(huge)):
        load_image_rgb(huge)


def test_load_limit_is_the_module_constant(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "s.png")
    monkeypatch.setattr(transforms, "MAX_PIXELS", 399)
    with pytest.raises(ImageLoadError, match="20x20 px exceeds"):
        load_image_rgb(tmp_path / "s.png")


def test_prepare_satellite_inter_area_bgr_mean():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    out = prepare_satellite(rgb, BGR_PREP)
    # INTER_AREA by an integer factor is the block mean (rounded to uint8)
    blocks = np.rint(rgb.astype(np.float64).reshape(2, 2, 2, 2, 3).mean(axis=(1, 3)))
    expected = blocks[:, :, ::-1] - np.array([103.939, 116.779, 123.6])
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected.transpose(2, 0, 1), atol=1.001, rtol=0)
    np.testing.assert_allclose(prepare_satellite(_uniform(6, 6), BGR_PREP)[:, 0, 0], COLOUR_BGR_NORMALISED)


def test_prepare_ground_native_size_is_not_resampled():
    rgb = np.random.default_rng(3).integers(0, 256, (8, 40, 3), dtype=np.uint8)
    out = prepare_ground(rgb, BGR_PREP)
    expected = rgb[:, :, ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.6], dtype=np.float32)
    np.testing.assert_array_equal(out.numpy(), expected.transpose(2, 0, 1))
    assert prepare_ground(_uniform(16, 80), BGR_PREP).shape == (3, 8, 40)


def test_prepare_rgb_std_convention():
    prep = torchvision_preprocessing(BGR_PREP)
    out = prepare_ground(_uniform(8, 40), prep)[:, 0, 0]
    expected = [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224, (50 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)


def test_prepare_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match=r"satellite image must be an \(H, W, 3\) uint8"):
        prepare_satellite(np.zeros((4, 4), dtype=np.uint8), BGR_PREP)
    with pytest.raises(ValueError, match="dtype float64"):
        prepare_ground(np.zeros((4, 4, 3)), BGR_PREP)


def test_prepare_photo_places_scaled_photo_at_column_zero_on_horizon():
    # 40 px canvas, 90 degrees -> 10 px wide; a 10x20 (h x w) photo becomes 5x10, rows 2..6
    out = prepare_photo(_uniform(10, 20), BGR_PREP, fov_deg=90.0)
    assert out.shape == (3, 8, 40)
    filled = torch.zeros(8, 40, dtype=torch.bool)
    filled[2:7, :10] = True
    for c in range(3):
        torch.testing.assert_close(out[c][filled], torch.full((50,), COLOUR_BGR_NORMALISED[c]))
    assert torch.all(out[:, ~filled] == 0)


def test_prepare_photo_clips_tall_photo_and_validates_fov():
    out = prepare_photo(_uniform(40, 10), BGR_PREP, fov_deg=90.0)  # 10 wide -> 40 tall: clipped
    assert torch.all(out[:, :, :10] != 0) and torch.all(out[:, :, 10:] == 0)
    with pytest.raises(ValueError, match="fov_deg"):
        prepare_photo(_uniform(4, 4), BGR_PREP, fov_deg=0)


def _scene_rgb(az: np.ndarray, el: np.ndarray) -> np.ndarray:
    """A smooth colour for each viewing direction (radians): what any camera at the spot sees."""
    r = 128 + 90 * np.sin(3 * az)
    g = 128 + 90 * np.sin(5 * el + 0.3)
    b = 128 + 60 * np.cos(2 * az + 4 * el)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fov", [60.0, 90.0])
def test_prepare_photo_reprojects_a_pinhole_photo_into_the_panorama_geometry(fov: float) -> None:
    # The same scene seen as a level pinhole photo (heading 0) and as the equirectangular canvas
    # the weights expect (rows from +35 to -45 degrees), both computed here from directions.
    prep = Preprocessing(sat_size=2, grd_size=(64, 352), pano_elevation_deg=(35.0, -45.0))
    rows, cols = 480, 640
    focal = (cols / 2) / math.tan(math.radians(fov) / 2)
    u = np.arange(cols) + 0.5 - cols / 2
    v = np.arange(rows) + 0.5 - rows / 2
    photo = _scene_rgb(
        np.broadcast_to(np.arctan2(u, focal), (rows, cols)),
        np.arctan(-v[:, None] / np.sqrt(focal**2 + u[None, :] ** 2)),
    )
    az = np.radians((np.arange(352) + 0.5) * 360 / 352 - fov / 2)
    el = np.radians(35 - (np.arange(64) + 0.5) * 80 / 64)
    want = prepare_ground(_scene_rgb(*np.meshgrid(az, el)), prep)
    got = prepare_photo(photo, prep, fov_deg=fov)
    covered = got.abs().sum(0) > 0
    ncol = math.ceil(fov / 360 * 352)
    assert not covered[:, ncol:].any()  # nothing right of the photo's field of view
    # The photo covers +-(vertical half-angle) around the horizon (row 28) in its middle column.
    half_v = math.degrees(math.atan((rows / 2) / focal))
    middle = covered[:, ncol // 2].nonzero().flatten()
    assert abs(middle[0].item() - (35 - half_v) * 64 / 80) <= 1.5
    assert abs(middle[-1].item() - (35 + half_v) * 64 / 80) <= 1.5
    error = (got - want).abs()[:, covered].mean().item()
    assert error < 1.0, error  # 0-255 units: resampling only
    # The scaled placement (no elevation span known) puts the same photo elsewhere.
    scaled = prepare_photo(photo, dataclasses.replace(prep, pano_elevation_deg=None), fov_deg=fov)
    assert (scaled - want).abs()[:, covered].mean().item() > 4 * error


def test_pano_elevation_is_validated() -> None:
    with pytest.raises(ValueError, match="pano_elevation_deg"):
        Preprocessing(sat_size=2, grd_size=(8, 40), pano_elevation_deg=(-10.0, 20.0))


class _FixedRng:
    """Stands in for np.random.Generator: returns the queued integers in order."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def integers(self, low: int, high: int) -> int:
        value = self.values.pop(0)
        assert low <= value < high
        return value


def test_augment_satellite_crop_and_rotation_cases():
    tile = np.random.default_rng(4).integers(0, 256, (750, 750, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment_satellite(tile, _FixedRng(512, 0)), tile)  # 512: no crop
    np.testing.assert_array_equal(augment_satellite(tile, _FixedRng(513, 4)), tile[118:631, 118:631])
    small = np.zeros((4, 4, 3), dtype=np.uint8)
    small[0, 3] = 255  # top-right pixel
    rotated = augment_satellite(small, _FixedRng(1, 1))  # 90 degrees counter-clockwise
    assert rotated[0, 0, 0] == 255 and rotated.sum() == 3 * 255
    assert augment_satellite(small, _FixedRng(1, 2))[3, 0, 0] == 255  # 180: bottom-left


def test_augment_satellite_probabilities():
    rng = np.random.default_rng(5)
    tile = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)  # int(0.683*10)=6: c in {7, 8}
    crops = identities = 0
    trials = 4000
    for _ in range(trials):
        out = augment_satellite(tile, rng)
        crops += out.shape[0] < 10
        identities += out.shape[0] == 10 and np.array_equal(out, tile)
    assert crops / trials == pytest.approx(2 / 8, abs=0.03)
    assert identities / (trials - crops) == pytest.approx(0.4, abs=0.03)
    with pytest.raises(ValueError, match="square tile"):
        augment_satellite(np.zeros((4, 5, 3), dtype=np.uint8), rng)


def _marker_scene(east: int, north: int) -> tuple[np.ndarray, np.ndarray]:
    """A 41x41 tile with one bright pixel east/north pixels from the centre, and a 16x64
    panorama (north at column 0, azimuth clockwise) with one bright column towards it."""
    sat = np.zeros((41, 41, 3), dtype=np.uint8)
    sat[20 - north, 20 + east] = 255
    pano = np.zeros((16, 64, 3), dtype=np.uint8)
    azimuth = math.degrees(math.atan2(east, north)) % 360
    pano[:, int(azimuth / 360 * 64)] = 255
    return pano, sat


def _bright_azimuths(pano: np.ndarray, sat: np.ndarray) -> tuple[float, float]:
    """Azimuth (degrees clockwise from north) of the bright column and of the bright tile pixel."""
    col = int(np.argmax(pano[0, :, 0]))
    row, x = np.argwhere(sat[:, :, 0] == 255)[0]
    tile_az = math.degrees(math.atan2(x - 20, 20 - row)) % 360
    return (col + 0.5) / pano.shape[1] * 360, tile_az


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("mirror", [False, True])
def test_rotate_flip_pair_keeps_panorama_and_tile_aligned(turns: int, mirror: bool) -> None:
    # A landmark 30 degrees east of north: after any turn/mirror, the panorama must still look
    # towards it at the azimuth where the north-up tile shows it (within one column, 5.6 deg).
    pano, sat = _marker_scene(east=7, north=12)  # atan2(7, 12) = 30.3 degrees
    new_pano, new_sat = rotate_flip_pair(pano, sat, turns, mirror)
    pano_az, tile_az = _bright_azimuths(new_pano, new_sat)
    expected = ((-30.0 if mirror else 30.0) - 90.0 * turns) % 360  # counter-clockwise turns
    assert abs((tile_az - expected + 180) % 360 - 180) < 0.5
    assert abs((pano_az - tile_az + 180) % 360 - 180) < 360 / 64
    assert new_pano.flags.c_contiguous and new_sat.flags.c_contiguous


def test_rotate_flip_pair_leaves_photo_heading_but_mirrors_it() -> None:
    photo = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    sat = np.zeros((4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rotate_flip_pair(photo, sat, 1, False, panorama=False)[0], photo)
    np.testing.assert_array_equal(rotate_flip_pair(photo, sat, 3, True, panorama=False)[0], photo[:, ::-1])


_CPU_PREP = Preprocessing(
    sat_size=128, grd_size=(64, 352), channel_order="BGR", mean=(103.939, 116.779, 123.6), std=(1.0, 1.0, 1.0)
)


@pytest.mark.parametrize("shape", [(112, 616), (64, 352), (50, 300), (257, 1301)])
@pytest.mark.parametrize(
    "prep",
    [_CPU_PREP, dataclasses.replace(_CPU_PREP, channel_order="RGB", std=(58.4, 57.1, 57.4))],
    ids=["bgr-std1", "rgb-std"],
)
def test_prepare_ground_equals_reference_arithmetic(shape: tuple[int, int], prep: Preprocessing) -> None:
    # The one-pass normalisation must give exactly float32(x) - float32(mean), / float32(std).
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    height, width = prep.grd_size
    resized = (
        rgb if shape == (height, width) else cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    )
    ordered = resized[:, :, ::-1] if prep.channel_order == "BGR" else resized
    mean, std = np.asarray(prep.mean, dtype=np.float32), np.asarray(prep.std, dtype=np.float32)
    want = torch.from_numpy(
        np.ascontiguousarray(((ordered.astype(np.float32) - mean) / std).transpose(2, 0, 1))
    )
    got = prepare_ground(rgb, prep)
    assert got.dtype == want.dtype == torch.float32
    assert got.shape == want.shape == (3, *prep.grd_size)
    assert torch.equal(got, want)


def test_prepare_ground_refuses_unknown_channel_order() -> None:
    rgb = np.zeros((64, 352, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="channel_order"):
        prepare_ground(rgb, dataclasses.replace(_CPU_PREP, channel_order="GRB"))


def _jpeg_bytes(width: int, height: int, exif: Image.Exif | None = None) -> bytes:
    """A smooth (so that scaled decoding stays close to the full one) width x height JPEG."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), (xx + yy) % 256], axis=2
    )
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(
        buf, format="JPEG", quality=92, **({"exif": exif} if exif else {})
    )
    return buf.getvalue()


CPU_PREP = Preprocessing(sat_size=128, grd_size=(64, 352))


def _panorama_fit(width: int, height: int) -> tuple[int, int]:
    return input_size(width, height, CPU_PREP, "panorama")


def test_input_size_of_panorama_and_photo() -> None:
    assert input_size(1000, 10, CPU_PREP, "panorama") == (352, 64)
    # 90 degrees of a 352-column panorama are 88 columns; a 4:3 photo keeps its aspect: 66 rows.
    assert input_size(4000, 3000, CPU_PREP, "photo") == (88, 66)
    assert input_size(3000, 4000, CPU_PREP, "photo", fov_deg=60.0) == (59, 79)
    with pytest.raises(ValueError, match="kind"):
        input_size(10, 10, CPU_PREP, "aerial")
    # prepare_photo resizes to exactly that size: a 2:1 photo becomes 88 x 44, rows 10-53 of the
    # 64-row canvas (centred on the horizon, row 32), columns 0-87.
    assert input_size(4000, 2000, CPU_PREP, "photo") == (88, 44)
    photo = prepare_photo(_uniform(2000, 4000), CPU_PREP)
    filled = torch.count_nonzero(photo, dim=0) > 0
    assert filled[10:54, :88].all() and not filled[:10].any() and not filled[54:].any()
    assert not filled[:, 88:].any()


def test_large_jpeg_is_decoded_at_reduced_scale_no_smaller_than_the_input() -> None:
    # 1600 x 300 against 352 x 64: both fit four times (1600 // 352 = 300 // 64 = 4), so the
    # decoder works at 1/4: ceil(1600 / 4) x ceil(300 / 4) = 400 x 75.
    data = _jpeg_bytes(1600, 300)
    reduced = load_image_rgb(data, fit=_panorama_fit)
    assert reduced.shape == (75, 400, 3)
    full = load_image_rgb(data)
    assert full.shape == (300, 1600, 3)
    # After the resize to the network input both are nearly the same picture.
    a = cv2.resize(full, (352, 64), interpolation=cv2.INTER_AREA).astype(int)
    b = cv2.resize(reduced, (352, 64), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(a - b).mean() < 2.0
    # The synthetic world's 616 x 112 panoramas do not fit twice (616 // 352 = 1): full size.
    assert load_image_rgb(_jpeg_bytes(616, 112), fit=_panorama_fit).shape == (112, 616, 3)


def test_reduced_decode_follows_exif_orientation() -> None:
    # Stored 3000 x 800, displayed turned (orientation 6): an 800 x 3000 portrait photo, whose
    # input is 88 x round(88 * 3000 / 800) = 88 x 330; 800 // 88 = 9 and 3000 // 330 = 9, so the
    # decoder works at 1/8 and the displayed image is ceil(800 / 8) x ceil(3000 / 8) = 100 x 375.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = _jpeg_bytes(3000, 800, exif)
    seen = []

    def fit(width: int, height: int) -> tuple[int, int]:
        seen.append((width, height))
        return input_size(width, height, CPU_PREP, "photo")

    assert load_image_rgb(data, fit=fit).shape == (375, 100, 3)
    assert seen == [(800, 3000)]


def test_reduced_decode_leaves_other_formats_whole(tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 1600, 3), dtype=np.uint8)).save(path)
    assert load_image_rgb(path, fit=_panorama_fit).shape == (300, 1600, 3)
