"""Descriptor centring: subtract each domain's mean descriptor, then L2-normalise again.

The two branches of a trained model put all of their descriptors near a common direction of their
own (for the shipped weights the mean ground descriptor has norm 0.40, the mean satellite
descriptor 0.51, and the two means are not parallel). A query's inner product with a tile then
carries a term that depends on the tile alone, which favours some tiles for every query. Removing
each domain's mean (as NetVLAD's authors whiten their descriptors with statistics of training
images) takes that term out; docs/model-card.md gives the effect.

The means are per view descriptor (out_dim values per domain, averaged over images and over all
eight scene transforms of `model.views`), so one set of means serves every view count. Ordinary
photos, mostly empty canvases (`prepare_photo`), make a domain of their own with a mean of their
own. They live in the model as the buffers `ground_center` / `satellite_center` / `photo_center`
(saved with the weights) and are used when the preprocessing says `centered`;
`cvm center-weights` (cli/center_weights.py) measures them on training worlds, never on the
worlds an evaluation reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from model.netvlad import L2_EPS

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.cvm_net import CVMNet

CENTER_BUFFERS = ("ground_center", "satellite_center", "photo_center")


def center(e: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(b, d) view descriptors -> the same minus `mean` ((d,) or (b, d)), each row L2-normalised."""
    return F.normalize(e - mean, dim=1, eps=L2_EPS)


def set_centers(
    net: CVMNet,
    ground: torch.Tensor | np.ndarray,
    satellite: torch.Tensor | np.ndarray,
    photo: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Store measured mean view descriptors in `net` (its preprocessing is not changed here);
    photos without a mean of their own are centred with the panoramas' (`photo` None)."""
    photo = ground if photo is None else photo
    for name, value in zip(CENTER_BUFFERS, (ground, satellite, photo), strict=True):
        buf = getattr(net, name)
        t = torch.as_tensor(value, dtype=buf.dtype)
        if t.shape != buf.shape:
            raise ValueError(f"{name} must have shape {tuple(buf.shape)}, got {tuple(t.shape)}")
        buf.copy_(t)


def has_centers(net: CVMNet) -> bool:
    """Whether `net` holds measured means (not the zeros of weights that were never centred)."""
    return any(bool(getattr(net, name).any()) for name in CENTER_BUFFERS)


def clear_centers(net: CVMNet) -> None:
    """Zero the stored means: for weights that changed since they were measured."""
    for name in CENTER_BUFFERS:
        getattr(net, name).zero_()


def with_default_centers(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`state_dict` with the means it lacks added: zeros for weights saved before centring existed,
    and for centred weights saved before photos had a mean of their own, the panoramas' mean as
    the photos' (what they used). ValueError when `cfg` says the descriptors are centred but the
    panorama or satellite mean is missing."""
    missing = [k for k in CENTER_BUFFERS if k not in state_dict]
    if not missing:
        return state_dict
    if cfg.preprocessing.centered and missing != ["photo_center"]:
        raise ValueError(f"its preprocessing is centred but it holds no {' / '.join(missing)}")
    added = {k: torch.zeros(cfg.out_dim) for k in missing}
    if "photo_center" in missing and "ground_center" in state_dict:
        added["photo_center"] = state_dict["ground_center"].clone()
    return {**state_dict, **added}
