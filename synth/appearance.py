"""Per-image camera and illumination effects, drawn independently for every view.

The aerial crop, the panorama and the photo of one place each get their own gain, gamma, white
balance, haze, blur, sensor noise and JPEG quality (and the ground views their own sky), so the
two sides of a pair never match pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from synth.panorama import Sky


@dataclass(frozen=True)
class ViewStyle:
    """Camera response of one image.

    gain: overall exposure factor; gamma: exponent on 0..1 values; white_balance: per-channel
    RGB factors; haze: 0..1 blend towards haze_rgb; blur_sigma: Gaussian blur in pixels;
    noise_sigma: sensor noise in 0-255 units; jpeg_quality: 0-100.
    """

    gain: float
    gamma: float
    white_balance: tuple[float, float, float]
    haze: float
    haze_rgb: tuple[float, float, float]
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int


def sample_style(rng: np.random.Generator, aerial: bool) -> ViewStyle:
    """A random camera response; aerial views get stronger haze and softer focus."""
    wb = rng.uniform(0.88, 1.12, size=3)
    wb /= wb.mean()
    return ViewStyle(
        gain=float(rng.uniform(0.75, 1.25)),
        gamma=float(rng.uniform(0.8, 1.25)),
        white_balance=(float(wb[0]), float(wb[1]), float(wb[2])),
        haze=float(rng.uniform(0.0, 0.25 if aerial else 0.12)),
        haze_rgb=tuple(float(c) for c in rng.uniform(170, 225, size=3)),  # type: ignore[arg-type]
        blur_sigma=float(rng.uniform(0.0, 1.2 if aerial else 0.8)),
        noise_sigma=float(rng.uniform(1.0, 6.0)),
        jpeg_quality=int(rng.integers(60, 96)),
    )


def sample_sky(rng: np.random.Generator) -> Sky:
    """Sky colours and haze distance of one ground view."""
    horizon = rng.uniform(185, 230, size=3) * np.array([0.97, 1.0, 1.03])
    zenith = np.array([rng.uniform(70, 140), rng.uniform(120, 170), rng.uniform(190, 235)])
    grey = rng.uniform(0.0, 0.6)  # overcast skies are greyer
    zenith = zenith * (1 - grey) + horizon * 0.9 * grey
    return Sky(
        horizon=(float(horizon[0]), float(horizon[1]), float(horizon[2])),
        zenith=(float(zenith[0]), float(zenith[1]), float(zenith[2])),
        haze_m=float(rng.uniform(150.0, 600.0)),
        clouds=float(rng.uniform(0.0, 1.0)),
        cloud_seed=int(rng.integers(2**31)),
    )


def apply_style(rgb: np.ndarray, style: ViewStyle, rng: np.random.Generator) -> np.ndarray:
    """Apply `style` to an RGB image (h, w, 3) with 0-255 values; returns uint8 (h, w, 3)."""
    x: np.ndarray = rgb.astype(np.float32) / 255.0
    x *= np.float32(style.gain) * np.asarray(style.white_balance, dtype=np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    x = x ** np.float32(style.gamma)
    x = x * (1.0 - style.haze) + np.asarray(style.haze_rgb, dtype=np.float32) / 255.0 * style.haze
    if style.blur_sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), style.blur_sigma)
    x = x * 255.0 + rng.normal(0.0, style.noise_sigma, size=x.shape).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image (baseline, deterministic for identical input)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
