"""Ground views ray-cast over the world's height field: 360-degree panoramas and photos.

Every image column is one azimuth. Along it the height field is sampled at increasing distances
d_k; the tangent of the elevation of each sample's top, e_k = (h_k - eye) / d_k, and its running
maximum tell which sample a pixel's ray hits first: the first k whose running maximum reaches the
pixel's tan(elevation). No sample reached means sky. Columns are marched all at once in numpy.

Panoramas are equirectangular: column 0 looks north (true north), azimuth grows clockwise
(east at width / 4), rows span elevation +35 (top) to -45 degrees (bottom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from synth import layout as L
from synth.world import World

PANO_SIZE = (112, 616)  # (rows, cols): CVUSA's 224 x 1232 halved
PANO_TOP_DEG = 35.0
PANO_BOTTOM_DEG = -45.0
EYE_M = 2.0
MAX_DIST_M = 150.0
SUPERSAMPLE = 2  # panoramas: rendered at 2x and area-averaged
PHOTO_SUPERSAMPLE = 1.5


@dataclass(frozen=True)
class Sky:
    """One view's sky: horizon and zenith colours (RGB 0-255), haze distance (m), cloud cover
    (0 clear .. 1 overcast) and the seed of its cloud pattern."""

    horizon: tuple[float, float, float]
    zenith: tuple[float, float, float]
    haze_m: float
    clouds: float
    cloud_seed: int = 0


def march_distances(max_dist_m: float = MAX_DIST_M) -> np.ndarray:
    """Sample distances (K,) metres: every 0.25 m to 30 m, then growing by 0.83 % per step."""
    near = np.arange(0.5, 30.0, 0.25)
    far = 30.0 * 1.0083 ** np.arange(1, int(math.log(max_dist_m / 30.0) / math.log(1.0083)) + 2)
    return np.concatenate([near, far]).astype(np.float32)


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into 0..n-1 so rays leaving the world see a plausible continuation."""
    if i.size and i.min() >= 0 and i.max() < n:
        return i
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def cast(
    world: World, x_px: float, y_px: float, az_grid: np.ndarray, tan_el: np.ndarray, sky: Sky
) -> np.ndarray:
    """Render rays from eye height above pixel position (x_px, y_px).

    az_grid: (C,) azimuth of each column, radians clockwise from grid north.
    tan_el:  (R, C) tangent of each pixel's elevation.
    Returns (R, C, 3) float32 RGB 0-255.
    """
    gsd, n = world.frame.gsd_m, world.size_px
    d = march_distances()
    sin_a = np.sin(az_grid).astype(np.float32)[:, None]
    cos_a = np.cos(az_grid).astype(np.float32)[:, None]
    ix = _reflect(np.floor(x_px + sin_a * (d / gsd)).astype(np.int64), n)  # (C, K)
    iy = _reflect(np.floor(y_px - cos_a * (d / gsd)).astype(np.int64), n)
    cell = iy * n + ix
    h = world.height.reshape(-1)[cell]
    reach = np.maximum.accumulate(np.clip((h - EYE_M) / d, -20.0, 20.0), axis=1)
    cols, k_max = reach.shape
    offset = (64.0 * np.arange(cols, dtype=np.float32))[:, None]
    q = np.ascontiguousarray(tan_el.T, dtype=np.float32)  # (C, R)
    k = np.searchsorted((reach + offset).ravel(), (q + offset).ravel()).reshape(q.shape)
    k -= k_max * np.arange(cols)[:, None]
    rgb = np.empty((*q.shape, 3), dtype=np.float32)
    hit = k < k_max
    col = np.broadcast_to(np.arange(cols)[:, None], q.shape)[hit]
    flat = col * k_max + k[hit]  # index of the hit sample in the (C, K) arrays
    hits = Hits(
        col, q[hit], d[k[hit]], d[np.maximum(k[hit] - 1, 0)], h.reshape(-1)[flat], cell.reshape(-1)[flat]
    )
    colour = _surface_colour(world, x_px, y_px, sin_a[col, 0], cos_a[col, 0], hits)
    rgb[hit] = _haze(colour, hits.dist, sky)
    sky_col = np.broadcast_to(np.arange(cols)[:, None], q.shape)[~hit]
    rgb[~hit] = _sky_colour(q[~hit], sin_a[sky_col, 0], cos_a[sky_col, 0], sky)
    return np.transpose(rgb, (1, 0, 2))


@dataclass(frozen=True)
class Hits:
    """Rays that hit the world (all arrays (m,)): column, tan(elevation), distance of the hit
    sample and of the one before it (m), height there (m) and its raster cell (row * S + col)."""

    col: np.ndarray
    q: np.ndarray
    dist: np.ndarray
    prev: np.ndarray
    height: np.ndarray
    cell: np.ndarray


def _surface_colour(
    world: World, x_px: float, y_px: float, sin_a: np.ndarray, cos_a: np.ndarray, hits: Hits
) -> np.ndarray:
    """Colour of each hit (m, 3): the top surface where the ray meets the object's top plane,
    or the side colour where it meets a vertical face (wall, crown side, car body)."""
    z_ray = EYE_M + hits.q * hits.dist
    side = z_ray < hits.height - 0.3
    rgb = np.empty((len(hits.q), 3), dtype=np.float32)
    top = ~side
    # Intersect the ray with the plane z = height for a smooth, exact ground texture.
    q_top = np.minimum(hits.q[top], -1e-6)
    d_top = np.clip((hits.height[top] - EYE_M) / q_top, hits.prev[top], hits.dist[top])
    fx = x_px + sin_a[top] * d_top / world.frame.gsd_m
    fy = y_px - cos_a[top] * d_top / world.frame.gsd_m
    rgb[top] = _bilinear(world.albedo, fx, fy) * np.float32(0.95)
    dk = hits.dist[side]
    # u - v of the hit point: runs along walls of any orientation except the u = v diagonal.
    along = (x_px - y_px) * world.frame.gsd_m + (sin_a[side] + cos_a[side]) * dk
    rgb[side] = _side_colour(world, hits.cell[side], z_ray[side], hits.height[side], along)
    return rgb


def _bilinear(image: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """Bilinear samples (m, 3) float32 of an (S, S, 3) raster at continuous pixel positions."""
    n = image.shape[0]
    fx, fy = fx - 0.5, fy - 0.5  # pixel centres sit at +0.5
    x0, y0 = np.floor(fx), np.floor(fy)
    wx, wy = (fx - x0)[:, None].astype(np.float32), (fy - y0)[:, None].astype(np.float32)
    xs = [_reflect(x0.astype(np.int64) + i, n) for i in (0, 1)]
    ys = [_reflect(y0.astype(np.int64) + i, n) for i in (0, 1)]
    flat = image.reshape(-1, 3)
    top = flat[ys[0] * n + xs[0]] * (1 - wx) + flat[ys[0] * n + xs[1]] * wx
    bottom = flat[ys[1] * n + xs[0]] * (1 - wx) + flat[ys[1] * n + xs[1]] * wx
    return top * (1 - wy) + bottom * wy


def _side_colour(
    world: World, cell: np.ndarray, z: np.ndarray, height: np.ndarray, along: np.ndarray
) -> np.ndarray:
    """Colour (m, 3) of vertical faces hit at height z (m) in raster cells `cell`.

    Buildings get floors every 3 m with a band of windows, window columns every 2.5 m along the
    wall (`along`, metres); crowns get leafy clumps and darken towards their shaded underside.
    """
    colour = world.side.reshape(-1, 3)[cell].astype(np.float32)
    cls = world.cls.reshape(-1)[cell]
    floor_z = np.mod(z, 3.0)
    window = (cls == L.BUILDING) & (floor_z > 1.0) & (floor_z < 2.3)
    window &= (np.mod(along, 2.5) > 0.7) & (z < height - 0.8)
    colour[window] = colour[window] * 0.35 + np.asarray([40.0, 52.0, 66.0], dtype=np.float32)
    tree = cls == L.TREE
    # A cheap integer hash of (cell, 0.4 m height band) gives leaf clumps without a texture.
    band = np.floor(z[tree] * 2.5).astype(np.int64)
    clump = ((cell[tree] * 2654435761 + band * 40503) >> 7 & 255).astype(np.float32) / 255.0
    shade = (0.45 + 0.55 * np.clip(z[tree] / np.maximum(height[tree], 1.0), 0.0, 1.0)) * (0.8 + 0.4 * clump)
    colour[tree] *= shade[:, None]
    return colour


def _haze(rgb: np.ndarray, dist: np.ndarray, sky: Sky) -> np.ndarray:
    """Blend colours (m, 3) towards the horizon colour with distance (m,) in metres."""
    a = (1.0 - np.exp(-dist / np.float32(sky.haze_m)))[..., None].astype(np.float32)
    return rgb * (1.0 - a) + np.asarray(sky.horizon, dtype=np.float32) * a


def _sky_colour(q: np.ndarray, sin_a: np.ndarray, cos_a: np.ndarray, sky: Sky) -> np.ndarray:
    """Sky (m, 3) for rays of tan(elevation) q and azimuth sin/cos (m,): a horizon-to-zenith
    gradient with clouds on a flat cloud layer (so they shrink towards the horizon)."""
    el = np.arctan(np.clip(q, 0.0, None))
    w = np.clip(el / math.radians(50.0), 0.0, 1.0)[..., None] ** 0.7
    horizon = np.asarray(sky.horizon, dtype=np.float32)
    rgb = horizon * (1 - w) + np.asarray(sky.zenith, dtype=np.float32) * w
    if sky.clouds > 0.05:
        reach = 1.0 / np.maximum(q, 0.08)  # distance to the cloud layer per unit height
        density = _cloud_density(sin_a * reach, cos_a * reach, sky.cloud_seed)
        cover = np.clip((density - (1.0 - sky.clouds) * 1.2 + 0.3) * 1.5, 0.0, 1.0)[:, None]
        cover *= np.clip(q / 0.1, 0.0, 1.0)[:, None]  # fade into the haze at the horizon
        cloud = np.float32(0.95) * horizon + np.float32(18.0) - np.float32(25.0) * cover
        rgb = rgb * (1 - cover) + cloud * cover
    return rgb.astype(np.float32)


def _cloud_density(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth, tiling noise (m,) of roughly unit spread at cloud-layer coordinates (u, v)."""
    grid = np.random.default_rng(seed).standard_normal((16, 16)).astype(np.float32)
    big = cv2.resize(np.tile(grid, (3, 3)), (192, 192), interpolation=cv2.INTER_CUBIC)[64:128, 64:128]
    iu = np.mod((u * 6.0).astype(np.int64), 64)
    iv = np.mod((v * 6.0).astype(np.int64), 64)
    return big[iv, iu]


def render_panorama(world: World, x_px: float, y_px: float, sky: Sky) -> np.ndarray:
    """Equirectangular 360-degree view (112, 616, 3) float32 RGB from (x_px, y_px)."""
    rows, cols = PANO_SIZE[0] * SUPERSAMPLE, PANO_SIZE[1] * SUPERSAMPLE
    az_true = (np.arange(cols) + 0.5) / cols * 2 * math.pi
    az_grid = az_true + math.radians(world.frame.true_north_grid_deg)
    el = np.radians(PANO_TOP_DEG + (np.arange(rows) + 0.5) / rows * (PANO_BOTTOM_DEG - PANO_TOP_DEG))
    tan_el = np.broadcast_to(np.tan(el)[:, None], (rows, cols))
    big = cast(world, x_px, y_px, az_grid, tan_el, sky)
    return cv2.resize(big, (PANO_SIZE[1], PANO_SIZE[0]), interpolation=cv2.INTER_AREA)


def render_photo(
    world: World,
    x_px: float,
    y_px: float,
    heading_deg: float,
    fov_deg: float,
    size: tuple[int, int],
    sky: Sky,
) -> np.ndarray:
    """Level pinhole photo (rows, cols, 3) float32 RGB looking at true `heading_deg` with a
    horizontal field of view of `fov_deg`."""
    rows, cols = int(size[0] * PHOTO_SUPERSAMPLE), int(size[1] * PHOTO_SUPERSAMPLE)
    focal = (cols / 2) / math.tan(math.radians(fov_deg) / 2)
    u = np.arange(cols) + 0.5 - cols / 2
    v = np.arange(rows) + 0.5 - rows / 2
    az_grid = math.radians(heading_deg + world.frame.true_north_grid_deg) + np.arctan2(u, focal)
    tan_el = -v[:, None] / np.sqrt(focal**2 + u[None, :] ** 2)
    big = cast(world, x_px, y_px, az_grid, tan_el, sky)
    return cv2.resize(big, (size[1], size[0]), interpolation=cv2.INTER_AREA)
