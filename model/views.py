"""Test-time views: a descriptor made of the descriptors of several turned/mirrored copies.

The views are the scene transforms of `model.transforms.rotate_flip_pair` (training's aligned
augmentation), applied to prepared inputs: view (k, mirror) mirrors east-west when `mirror`,
then turns the scene counter-clockwise by k quarter turns. A satellite input is flipped left-right
and rotated by `torch.rot90`; a north-aligned panorama has its columns reversed and rolled left by
k quarter widths. Both are exact permutations of pixels, so they commute with the per-pixel
normalisation, and for the presets' sizes with the INTER_AREA resize as well.

With V views the descriptor of an image is the concatenation of its V view descriptors divided by
sqrt(V): the inner product of two such descriptors is the mean of the V view-wise inner products
(and unit vectors stay unit vectors). View i of a ground image is always compared with view i of a
satellite image, so a pair keeps its north alignment in every view.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from model.config import VIEW_COUNTS

if TYPE_CHECKING:
    from model.cvm_net import CVMNet


def view_transforms(views: int) -> list[tuple[int, bool]]:
    """(quarter_turns, mirror) of each view, in descriptor order."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    mirrors = (False, True) if views == 8 else (False,)
    return [(k, m) for m in mirrors for k in range(views // len(mirrors))]


def ground_view(x: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """(b, 3, H, W) panorama canvases -> the same scene mirrored and turned (see module doc)."""
    if mirror:
        x = torch.flip(x, dims=(-1,))
    shift = round((quarter_turns % 4) * x.shape[-1] / 4)
    return torch.roll(x, -shift, dims=-1) if shift else x


def satellite_view(x: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """(b, 3, S, S) north-up tiles -> mirrored east-west, then turned counter-clockwise."""
    if mirror:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, quarter_turns % 4, dims=(-2, -1))


def describe(
    embed: Callable[[torch.Tensor], torch.Tensor],
    view: Callable[[torch.Tensor, int, bool], torch.Tensor],
    x: torch.Tensor,
    views: int,
) -> torch.Tensor:
    """(b, ...) inputs -> (b, views * d): `embed` of every view in one batch, concatenated per
    image in view order and divided by sqrt(views)."""
    transforms = view_transforms(views)
    if views == 1:
        return embed(x)
    out = embed(torch.cat([view(x, k, m) for k, m in transforms]))  # (views * b, d)
    b = x.shape[0]
    return out.reshape(views, b, -1).transpose(0, 1).reshape(b, -1) / math.sqrt(views)


def set_inference_options(
    net: CVMNet,
    views: int | None = None,
    photo_headings: int | None = None,
    centered: bool | None = None,
    pano_elevation_deg: tuple[float, float] | None = None,
) -> None:
    """Change how `net` describes images (its preprocessing's `views` / `photo_headings` /
    `centered` / `pano_elevation_deg`) without touching its weights; the new values are saved
    with it by `save_checkpoint`. None keeps a value."""
    prep = net.config.preprocessing
    prep = dataclasses.replace(
        prep,
        views=prep.views if views is None else views,
        photo_headings=prep.photo_headings if photo_headings is None else photo_headings,
        centered=prep.centered if centered is None else centered,
        pano_elevation_deg=prep.pano_elevation_deg if pano_elevation_deg is None else pano_elevation_deg,
    )
    net.config = dataclasses.replace(net.config, preprocessing=prep)
