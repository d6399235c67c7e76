"""Checking and decoding uploaded images.

The header is read first (Pillow parses only the header on `open`), so that a decompression bomb
-- a few KB of PNG announcing 30000 x 30000 pixels -- is refused before any pixel is decoded.

The pixels must be exactly those `model.transforms.load_image_rgb` gives training and evaluation,
so Pillow decodes them here too (cv2.imdecode agrees on plain JPEGs but converts grey, palette,
alpha and 16-bit images differently). For an RGB image -- nearly every JPEG, and WebP or PNG
without alpha -- the header's `open` is reused for the decode and the pixels are copied once;
`load_image_rgb` opens the image a second time, copies it in `exif_transpose` and again in
`convert("RGB")` before the array copy (about 0.15 ms of a 0.8 ms decode for the benchmark's
616 x 112 JPEG). Any other mode goes through `load_image_rgb` itself.

Given the size the image will be resized to (`fit`), a large JPEG is decoded at 1/2, 1/4 or 1/8
scale by `model.transforms.reduce_jpeg_decode`, as training and evaluation decode it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from model.transforms import MAX_PIXELS, ImageLoadError, SizeFor, load_image_rgb, reduce_jpeg_decode
from service.errors import CorruptImage, EmptyUpload, ImageTooLarge, UnsupportedImage

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
PANORAMA_MIN_ASPECT = 3.0


def _open_checked(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open an upload (header only) and validate it; returns the open image and its format name.

    Raises EmptyUpload, UnsupportedImage or ImageTooLarge; the image is closed when it raises.
    """
    if not data:
        raise EmptyUpload("the uploaded file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (or raises) past its own global limit; ours is checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"image too large: the header announces more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
            f"(a decompression bomb?); the limit is {max_pixels}"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage("the upload is not a JPEG, PNG or WebP image") from exc
    fmt, (width, height) = str(im.format), im.size
    if fmt not in ACCEPTED_FORMATS:
        im.close()
        raise UnsupportedImage(f"{fmt} images are not accepted; send a JPEG, PNG or WebP image")
    if width * height > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
        )
    return im, ACCEPTED_FORMATS[fmt]


def read_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Validate an upload from its header alone.

    Returns (format, width, height). Raises EmptyUpload, UnsupportedImage or ImageTooLarge.
    """
    im, fmt = _open_checked(data, max_pixels)
    with im:
        return fmt, im.width, im.height


def decode_upload(data: bytes, max_pixels: int, fit: SizeFor | None = None) -> np.ndarray:
    """Header check, then decode: bytes -> (H, W, 3) uint8 RGB, as `load_image_rgb(data, fit)` decodes.

    Raises EmptyUpload, UnsupportedImage, ImageTooLarge, or CorruptImage (undecodable/truncated).
    """
    im, fmt = _open_checked(data, max_pixels)
    with im:
        # `load_image_rgb` refuses over MAX_PIXELS with its own message; let it say so.
        if im.mode == "RGB" and im.width * im.height <= MAX_PIXELS:
            try:
                if fit is not None:
                    reduce_jpeg_decode(im, fit)
                im.load()  # full decode: a truncated file fails here
            except (OSError, ValueError, SyntaxError) as exc:
                raise CorruptImage(f"the {fmt} image cannot be decoded: cannot decode image: {exc}") from exc
            if im.mode == "RGB":
                return _rgb_pixels(im)
    try:
        return load_image_rgb(data, fit)
    except ImageLoadError as exc:
        raise CorruptImage(f"the {fmt} image cannot be decoded: {exc}") from exc


def _rgb_pixels(im: Image.Image) -> np.ndarray:
    """A loaded RGB image's pixels with its EXIF orientation applied, as `load_image_rgb` does.

    The same orientation lookup and transpose as `ImageOps.exif_transpose`, in place (that
    function copies the image when there is nothing to turn).
    """
    if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        ImageOps.exif_transpose(im, in_place=True)
    return np.asarray(im)


def kind_of_size(width: int, height: int) -> str:
    """ "panorama" when width / height >= 3 (an equirectangular strip), else "photo"."""
    return "panorama" if width / max(height, 1) >= PANORAMA_MIN_ASPECT else "photo"
