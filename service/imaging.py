"""Checking and decoding uploaded images.

The header is read first (Pillow parses only the header on `open`), so that a decompression bomb
-- a few KB of PNG announcing 30000 x 30000 pixels -- is refused before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.transforms import ImageLoadError, load_image_rgb
from service.errors import CorruptImage, EmptyUpload, ImageTooLarge, UnsupportedImage

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
PANORAMA_MIN_ASPECT = 3.0


def read_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Validate an upload from its header alone.

    Returns (format, width, height). Raises EmptyUpload, UnsupportedImage or ImageTooLarge.
    """
    if not data:
        raise EmptyUpload("the uploaded file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (or raises) past its own global limit; ours is checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = str(im.format), im.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"image too large: the header announces more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
            f"(a decompression bomb?); the limit is {max_pixels}"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage("the upload is not a JPEG, PNG or WebP image") from exc
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not accepted; send a JPEG, PNG or WebP image")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
        )
    return ACCEPTED_FORMATS[fmt], width, height


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Header check, then full decode: bytes -> (H, W, 3) uint8 RGB.

    Raises EmptyUpload, UnsupportedImage, ImageTooLarge, or CorruptImage (undecodable/truncated).
    """
    fmt, _, _ = read_header(data, max_pixels)
    try:
        return load_image_rgb(data)
    except ImageLoadError as exc:
        raise CorruptImage(f"the {fmt} image cannot be decoded: {exc}") from exc


def detect_kind(rgb: np.ndarray) -> str:
    """ "panorama" when width / height >= 3 (an equirectangular strip), else "photo"."""
    height, width = rgb.shape[:2]
    return "panorama" if width / max(height, 1) >= PANORAMA_MIN_ASPECT else "photo"
