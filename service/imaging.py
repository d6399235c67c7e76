"""Checking uploaded images, then decoding them with the project's one decoder.

The header is read first (Pillow parses only the header on `open`), so that a decompression bomb
-- a few KB of PNG announcing 30000 x 30000 pixels -- is refused before any pixel is decoded, and
so that only JPEG, PNG and WebP within the service's pixel limit reach the decoder. The open image
is then handed to `model.transforms.decode_open_image`, the decoder of training, evaluation and
the indexer (Pillow, EXIF orientation, conversion to 8-bit RGB, the reduced JPEG decode given
`fit`), so the service sees exactly their pixels; its errors become the service's `CorruptImage`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.transforms import ImageLoadError, SizeFor, decode_open_image
from service.errors import CorruptImage, EmptyUpload, ImageShapeRejected, ImageTooLarge, UnsupportedImage

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
PANORAMA_MIN_ASPECT = 3.0
# Shapes that no camera makes: a long side over 16 times the short one, or a side under 16 px.
# Refused from the header, because the preparation of such strips (resizing, a photo's
# reprojection) allocates for the long side alone and some of it fails outright.
MAX_ASPECT = 16.0
MIN_SIDE_PX = 16


def _open_checked(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open an upload (header only) and validate it; returns the open image and its format name.

    Raises EmptyUpload, UnsupportedImage or ImageTooLarge; the image is closed when it raises.
    """
    if not data:
        raise EmptyUpload("the image file is empty (0 bytes)")
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
        raise UnsupportedImage("not a JPEG, PNG or WebP image") from exc
    fmt, (width, height) = str(im.format), im.size
    if fmt not in ACCEPTED_FORMATS:
        im.close()
        raise UnsupportedImage(f"{fmt} images are not accepted; send a JPEG, PNG or WebP image")
    if width * height > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
        )
    if min(width, height) < MIN_SIDE_PX or max(width, height) > MAX_ASPECT * min(width, height):
        im.close()
        raise ImageShapeRejected(
            f"image shape not accepted: {width}x{height}; each side must be at least {MIN_SIDE_PX} px "
            f"and the long side at most {MAX_ASPECT:g} times the short one"
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
        try:
            return decode_open_image(im, fit)
        except ImageLoadError as exc:
            raise CorruptImage(f"the {fmt} image cannot be decoded: {exc.__cause__ or exc}") from exc


def kind_of_size(width: int, height: int) -> str:
    """ "panorama" when width / height >= 3 (an equirectangular strip), else "photo"."""
    return "panorama" if width / max(height, 1) >= PANORAMA_MIN_ASPECT else "photo"
