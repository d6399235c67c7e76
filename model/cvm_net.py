"""CVM-Net-I and CVM-Net-II (Hu et al., CVPR 2018): two-branch cross-view descriptor networks.

CVM-Net-I:  VGG_g -> NetVLAD_g ┐                      (independent per branch)
            VGG_s -> NetVLAD_s ┴-> shared Linear(D*K -> out_dim, bias) -> L2
CVM-Net-II: VGG_g -> 1x1 conv_g ┐                      (per branch)
            VGG_s -> 1x1 conv_s ┴-> shared [3x3 conv, 1x1 conv] -> shared NetVLAD
                                   with bias-free projection -> L2 if cfg.normalize_output
Every transform conv is followed by ReLU and dropout (BatchNorm before the ReLU when
cfg.batchnorm). Use `build_model(cfg)`; `net.embed_ground` / `net.embed_satellite` give one
branch's descriptors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import VGG16Conv5, conv_unit, init_convs
from model.centering import center
from model.config import ModelConfig
from model.netvlad import L2_EPS, NetVLAD
from model.views import describe, ground_view, satellite_view


class CVMNet(nn.Module):
    """Common interface of both variants: `config`, `out_dim`, `embed_ground`, `embed_satellite`."""

    config: ModelConfig
    out_dim: int
    ground_center: torch.Tensor
    satellite_center: torch.Tensor
    photo_center: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.out_dim = cfg.out_dim
        self.vgg_ground = VGG16Conv5(cfg)
        self.vgg_satellite = VGG16Conv5(cfg)
        # Mean view descriptor of each domain (`model.centering`); used when preprocessing.centered.
        self.register_buffer("ground_center", torch.zeros(cfg.out_dim))
        self.register_buffer("satellite_center", torch.zeros(cfg.out_dim))
        self.register_buffer("photo_center", torch.zeros(cfg.out_dim))

    def ground_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) prepared panoramas -> (b, D*K) or (b, out_dim) pre-FC vector (subclass)."""
        raise NotImplementedError

    def satellite_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, S, S) prepared satellite crops -> pre-FC vector (subclass)."""
        raise NotImplementedError

    def head(self, v: torch.Tensor) -> torch.Tensor:
        """Branch vector -> (b, out_dim) final descriptor (subclass)."""
        raise NotImplementedError

    def embed_ground(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) float panoramas, (H, W) = cfg.preprocessing.grd_size -> (b, out_dim)."""
        _check_input(x, self.config.preprocessing.grd_size, "ground")
        return self.head(self.ground_features(x))

    def embed_satellite(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, S, S) float satellite crops, S = cfg.preprocessing.sat_size -> (b, out_dim)."""
        size = self.config.preprocessing.sat_size
        _check_input(x, (size, size), "satellite")
        return self.head(self.satellite_features(x))

    def describe_ground(self, x: torch.Tensor, photo: bool | torch.Tensor = False) -> torch.Tensor:
        """(b, 3, H, W) -> (b, descriptor_dim): the descriptor the index and the service compare,
        `embed_ground` of each test-time view of the preprocessing (`model.views`), centred when
        it says so (`model.centering`). `photo` (all inputs, or a (b,) bool mask) marks ordinary
        photos' canvases, centred with the photos' mean instead of the panoramas'."""
        return describe(
            self._view_embedder(self.embed_ground, self._ground_mean(photo)), ground_view, x, self._views
        )

    def describe_satellite(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, S, S) -> (b, descriptor_dim): `describe_ground`'s counterpart for tiles."""
        embed = self._view_embedder(self.embed_satellite, self.satellite_center)
        return describe(embed, satellite_view, x, self._views)

    def _ground_mean(self, photo: bool | torch.Tensor) -> torch.Tensor:
        """(d,), or one row per input of the views' concatenation (views * b, d) for a mask."""
        if not self.config.preprocessing.centered:
            return self.ground_center  # unused
        if isinstance(photo, torch.Tensor):
            mask = photo.to(device=self.ground_center.device, dtype=torch.bool)[:, None]
            return torch.where(mask, self.photo_center, self.ground_center).repeat(self._views, 1)
        return self.photo_center if photo else self.ground_center

    @property
    def _views(self) -> int:
        return self.config.preprocessing.views

    def _view_embedder(
        self, embed: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.config.preprocessing.centered:
            return embed
        return lambda x: center(embed(x), mean)

    def forward(self, grd: torch.Tensor, sat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, 3, H, W) ground, (b, 3, S, S) satellite -> (g (b, out_dim), s (b, out_dim))."""
        return self.embed_ground(grd), self.embed_satellite(sat)


def _check_input(x: torch.Tensor, size: tuple[int, int], branch: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != tuple(size):
        raise ValueError(
            f"{branch} input must be (b, 3, {size[0]}, {size[1]}) as the model's preprocessing "
            f"says, got {tuple(x.shape)}"
        )


class CVMNetI(CVMNet):
    """CVM-Net-I: independent NetVLADs, one shared FC with bias, L2-normalised output."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, k = cfg.feature_dim, cfg.num_clusters
        self.netvlad_ground = NetVLAD(d, k)
        self.netvlad_satellite = NetVLAD(d, k)
        self.fc = nn.Linear(d * k, cfg.out_dim)
        init_convs(self, cfg.init)
        if cfg.init == "kaiming":
            # Variance-preserving and bias-free: the original's std 0.005 / bias 0.1 makes every
            # descriptor nearly the bias direction at start, which does not learn from scratch.
            nn.init.normal_(self.fc.weight, std=1.0 / math.sqrt(d * k))
            nn.init.zeros_(self.fc.bias)
        else:
            # TF truncated_normal(stddev=0.005) cuts at two standard deviations.
            nn.init.trunc_normal_(self.fc.weight, std=0.005, a=-0.01, b=0.01)
            nn.init.constant_(self.fc.bias, 0.1)

    def ground_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.netvlad_ground(self.vgg_ground(x))

    def satellite_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.netvlad_satellite(self.vgg_satellite(x))

    def head(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(v), dim=1, eps=L2_EPS)


class CVMNetII(CVMNet):
    """CVM-Net-II: per-branch and shared transform convs, one shared NetVLAD with projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, bn, p = cfg.feature_dim, cfg.batchnorm, cfg.dropout
        self.transform_ground = nn.Sequential(*conv_unit(d, d, 1, bn, p))
        self.transform_satellite = nn.Sequential(*conv_unit(d, d, 1, bn, p))
        self.transform_shared = nn.Sequential(*conv_unit(d, d, 3, bn, p), *conv_unit(d, d, 1, bn, p))
        self.netvlad = NetVLAD(d, cfg.num_clusters, proj_dim=cfg.out_dim)
        init_convs(self, cfg.init)

    def ground_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.netvlad(self.transform_shared(self.transform_ground(self.vgg_ground(x))))

    def satellite_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.netvlad(self.transform_shared(self.transform_satellite(self.vgg_satellite(x))))

    def head(self, v: torch.Tensor) -> torch.Tensor:
        # The original leaves this output unnormalised; cfg.normalize_output is the switch.
        return F.normalize(v, dim=1, eps=L2_EPS) if self.config.normalize_output else v


def build_model(cfg: ModelConfig) -> CVMNet:
    """The CVM-Net variant named by `cfg.arch`, freshly initialised as `cfg.init` says."""
    if cfg.arch == "cvm-net-i":
        return CVMNetI(cfg)
    if cfg.arch == "cvm-net-ii":
        return CVMNetII(cfg)
    raise ValueError(f"unknown arch {cfg.arch!r}")
