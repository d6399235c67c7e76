"""Uploads: checked from the header, then decoded by the model's decoder (`decode_open_image`),
whose errors become the service's; large JPEGs decoded reduced towards the input size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

import model.transforms
import service.imaging
from model.transforms import input_size, load_image_rgb, prepare_ground, prepare_photo
from service.errors import CorruptImage, ImageTooLarge, UnsupportedImage
from service.imaging import decode_upload
from service.localizer import Localizer
from tests.support.service_world import World


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(mode: str, size: tuple[int, int] = (37, 23)) -> Image.Image:
    rng = np.random.default_rng(3)
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, size=(size[1], size[0], bands), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(axis=2) if bands == 1 else pixels, mode)


def _oriented_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return _encode(_noise("RGB"), "JPEG", quality=90, exif=exif)


def _grey16_png() -> bytes:
    grey = np.random.default_rng(4).integers(0, 65536, size=(23, 37), dtype=np.uint16)
    return _encode(Image.fromarray(grey), "PNG")


def _palette_png_with_transparency() -> bytes:
    im = _noise("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(im, "PNG", transparency=3)


CASES = {
    "RGB JPEG": _encode(_noise("RGB"), "JPEG", quality=90),
    "RGB PNG": _encode(_noise("RGB"), "PNG"),
    "RGB WebP": _encode(_noise("RGB"), "WEBP", lossless=True),
    "lossy WebP": _encode(_noise("RGB"), "WEBP", quality=80),
    "RGBA PNG": _encode(_noise("RGBA"), "PNG"),
    "RGBA WebP": _encode(_noise("RGBA"), "WEBP", lossless=True),
    "grey JPEG": _encode(_noise("L"), "JPEG", quality=90),
    "grey PNG": _encode(_noise("L"), "PNG"),
    "16-bit grey PNG": _grey16_png(),
    "palette PNG with transparency": _palette_png_with_transparency(),
    "CMYK JPEG": _encode(_noise("CMYK"), "JPEG", quality=90),
    **{f"JPEG, EXIF orientation {o}": _oriented_jpeg(o) for o in range(1, 9)},
}


def _tiny_fit(width: int, height: int) -> tuple[int, int]:
    """An input a quarter of the image's size or less: every JPEG is decoded at 1/4 scale."""
    return max(1, width // 4), max(1, height // 4)


@pytest.mark.parametrize("fit", [None, _tiny_fit], ids=["full", "reduced"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_accepted_image_becomes_rgb(name: str, fit) -> None:
    got = decode_upload(CASES[name], max_pixels=10**6, fit=fit)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
    turned = name.endswith(tuple(f"orientation {o}" for o in (5, 6, 7, 8)))
    width, height = (23, 37) if turned else (37, 23)
    if fit is not None and "JPEG" in name:
        width, height = -(-width // 4), -(-height // 4)  # ceil(n / 4)
    assert got.shape[:2] == (height, width)


def test_lossless_pixels_and_grey_come_through() -> None:
    np.testing.assert_array_equal(decode_upload(CASES["RGB PNG"], 10**6), np.asarray(_noise("RGB")))
    np.testing.assert_array_equal(
        decode_upload(CASES["RGBA PNG"], 10**6), np.asarray(_noise("RGBA"))[..., :3]
    )
    grey = decode_upload(CASES["grey PNG"], 10**6)
    np.testing.assert_array_equal(grey, np.repeat(np.asarray(_noise("L"))[..., None], 3, axis=2))


def test_exif_orientation_is_applied() -> None:
    # Orientation 6 (rotate 90 degrees clockwise to display): a 37x23 image comes out 23 wide.
    upright = decode_upload(_oriented_jpeg(1), max_pixels=10**6)
    turned = decode_upload(_oriented_jpeg(6), max_pixels=10**6)
    assert turned.shape == (37, 23, 3)
    np.testing.assert_array_equal(turned, np.rot90(upright, k=-1))


def test_the_upload_is_opened_once_and_decoded_by_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    opened, decoded = [], []
    real_open, real_decode = Image.open, model.transforms.decode_open_image

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    def counting_decode(im, fit=None, name="<image bytes>"):
        decoded.append(im.format)
        return real_decode(im, fit, name)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(service.imaging, "decode_open_image", counting_decode)
    rgb = decode_upload(CASES["RGB JPEG"], max_pixels=10**6)
    assert len(opened) == 1 and decoded == ["JPEG"]
    np.testing.assert_array_equal(rgb, load_image_rgb(CASES["RGB JPEG"]))


@pytest.mark.parametrize("name", ["RGB JPEG", "grey PNG"])
def test_truncated_image_is_corrupt(name: str) -> None:
    data = CASES[name]
    with pytest.raises(CorruptImage, match=f"the {name.split()[-1]} image cannot be decoded") as caught:
        decode_upload(data[: len(data) // 2], max_pixels=10**6)
    assert "<image bytes>" not in str(caught.value)  # the reason, not the decoder's name for it


def test_upload_checks_come_before_the_decoder() -> None:
    with pytest.raises(ImageTooLarge, match="37x23 = 851 pixels, the limit is 850"):
        decode_upload(CASES["RGB PNG"], max_pixels=850)
    assert decode_upload(CASES["RGB PNG"], max_pixels=851).shape == (23, 37, 3)
    with pytest.raises(UnsupportedImage, match="GIF images are not accepted"):
        decode_upload(_encode(_noise("RGB"), "GIF"), max_pixels=10**6)


def _smooth_jpeg(width: int, height: int) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx // 7 + yy // 5) % 256], axis=2)
    return _encode(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=92)


@pytest.mark.parametrize("kind", [None, "photo", "panorama"])
def test_large_upload_gets_the_training_decoder_reduced_input(world: World, kind: str | None) -> None:
    """A 1600 x 1200 photo is decoded at reduced scale, exactly as training decodes it."""
    data = _smooth_jpeg(1600, 1200)
    localizer = Localizer.from_checkpoint(world.weights)
    prep = localizer.preprocessing
    x, used, _, _ = localizer.prepare(data, kind)
    assert used == (kind or "photo")  # 4:3 is a photo

    def fit(width: int, height: int) -> tuple[int, int]:
        return input_size(width, height, prep, used)

    prepare = prepare_photo if used == "photo" else prepare_ground
    want = prepare(load_image_rgb(data, fit=fit), prep)
    assert torch.equal(x, want[None])  # photo_headings 1: one input
    # Photo: an 88-column input, so the decoder works at 1/8 (200 x 150); as a forced panorama,
    # 352 x 64 fits 1600 x 1200 four times: 1/4 (400 x 300). Full decoding gives nearly the same.
    scale = 8 if used == "photo" else 4
    assert decode_upload(data, 10**7, fit).shape == (1200 // scale, 1600 // scale, 3)
    full = prepare(load_image_rgb(data), prep)
    assert not torch.equal(x[0], full) and (x[0] - full).abs().mean() < 2.0
