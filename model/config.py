"""Frozen configuration of a CVM-Net model and of the preprocessing its weights expect.

Both dataclasses are stored inside every checkpoint (as plain dicts) so that a checkpoint
describes itself: `model.checkpoint.load_checkpoint` rebuilds the exact model and its
preprocessing from the file alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ARCHS = ("cvm-net-i", "cvm-net-ii")
PRESETS = ("paper", "cpu")
INITS = ("original", "kaiming")

# Caffe VGG16 means in BGR order; note 123.6 (not 123.68), as in the original input_data.py.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.6)
# Test-time views (`model.views`): the image alone; its quarter turns; those and their mirrors.
VIEW_COUNTS = (1, 4, 8)


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB uint8 images become network input. Defined once, stored with the weights.

    sat_size:     side of the square satellite input in pixels.
    grd_size:     (height, width) of the ground panorama input in pixels.
    channel_order: "BGR" (the original, Caffe-style) or "RGB".
    mean:         per-channel mean subtracted from 0-255 values, in `channel_order`.
    std:          per-channel divisor applied after the mean subtraction, in `channel_order`
                  (1.0 in the original; 255*ImageNet std when torchvision VGG16 weights are used).
    sat_ground_m: ground footprint (metres) of one satellite input the weights were trained on;
                  None when unknown (the paper preset: CVUSA tiles). The indexer uses it as the
                  default tile size.
    pano_north_col: fraction of the panorama width at which north lies (0.0 = left edge).
    photo_headings: how many headings an ordinary photo (whose heading is unknown) is tried at,
                  each tile keeping its best similarity: 1 = only at column 0 (as `prepare_photo`
                  places it); more for weights trained with photos placed at their heading
                  (`cvm train --photo-placement heading`, docs/training.md).
    views:        test-time views in every descriptor (1, 4 or 8; `model.views`): the mean
                  similarity over turned/mirrored copies of both images. Training uses one view;
                  the indexer, the service and evaluation use `views`.
    pano_elevation_deg: (top, bottom) elevation in degrees of the first and last rows of the
                  panoramas the weights were trained on, when known ((35, -45) for the synthetic
                  worlds); an ordinary photo is then reprojected into that geometry
                  (`prepare_photo`). None: photos are scaled like panorama crops.
    centered:     each view descriptor has its domain's mean descriptor subtracted and is
                  L2-normalised again before it is compared (`model.centering`; the means are the
                  model's `ground_center` / `satellite_center` / `photo_center` buffers, measured
                  on training worlds by `cvm center-weights`). Like `views`, only inference
                  uses it.
    """

    sat_size: int
    grd_size: tuple[int, int]
    channel_order: str = "BGR"
    mean: tuple[float, float, float] = CAFFE_BGR_MEAN
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sat_ground_m: float | None = None
    pano_north_col: float = 0.0
    photo_headings: int = 1
    views: int = 1
    pano_elevation_deg: tuple[float, float] | None = None
    centered: bool = False

    def __post_init__(self) -> None:
        if self.photo_headings < 1:
            raise ValueError(f"photo_headings must be >= 1, got {self.photo_headings}")
        if self.views not in VIEW_COUNTS:
            raise ValueError(f"views must be one of {VIEW_COUNTS}, got {self.views}")
        if self.pano_elevation_deg is not None:
            top, bottom = self.pano_elevation_deg
            if not 90.0 >= top > bottom >= -90.0:
                raise ValueError(
                    "pano_elevation_deg must be (top, bottom) with 90 >= top > bottom >= -90, "
                    f"got {self.pano_elevation_deg}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        d["grd_size"] = tuple(d["grd_size"])
        d["mean"] = tuple(d["mean"])
        if "std" in d:
            d["std"] = tuple(d["std"])
        if d.get("pano_elevation_deg") is not None:
            d["pano_elevation_deg"] = tuple(d["pano_elevation_deg"])
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters.

    arch:             "cvm-net-i" or "cvm-net-ii".
    preset:           name of the preset this config came from ("paper", "cpu", or "custom").
    width_div:        VGG16 channel divisor (1 = the original 64..512 channels).
    batchnorm:        BatchNorm after every conv (False in the original; needed from scratch).
    num_clusters:     NetVLAD K (64 in the original).
    out_dim:          final descriptor size (4096 in the original).
    dropout:          dropout after each conv of VGG blocks 4-5 (and CVM-Net-II's transform convs).
    normalize_output: L2-normalise the final descriptor. CVM-Net-I always does; the original
                      CVM-Net-II does not (a switch here).
    frozen_blocks:    number of leading VGG16 blocks (0-5) whose weights are frozen. The original
                      freezes blocks 1-3 of its ImageNet-initialised VGG16; a model trained from
                      scratch must train every block (0).
    init:             "original" (the authors' initialisers: Xavier convs, FC std 0.005 / bias 0.1)
                      or "kaiming" (Kaiming convs, unit BatchNorm, zero biases, variance-preserving
                      FC), which is what learns from scratch.
    """

    arch: str
    preset: str
    preprocessing: Preprocessing
    width_div: int = 1
    batchnorm: bool = False
    num_clusters: int = 64
    out_dim: int = 4096
    dropout: float = 0.2
    normalize_output: bool = True
    frozen_blocks: int = 3
    init: str = "original"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if not 0 <= self.frozen_blocks <= 5:
            raise ValueError(f"frozen_blocks must be in 0..5, got {self.frozen_blocks}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {', '.join(INITS)}")
        if 512 % self.width_div:
            raise ValueError(f"width_div must divide 512, got {self.width_div}")

    @property
    def descriptor_dim(self) -> int:
        """Size of the stored/searched descriptor: out_dim per test-time view."""
        return self.out_dim * self.preprocessing.views

    @property
    def feature_dim(self) -> int:
        """Channels of the conv5_3 local features (512 at full width)."""
        return 512 // self.width_div

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return cls(**d)


PAPER_PREPROCESSING = Preprocessing(sat_size=512, grd_size=(224, 1232))

# Sized for training on 2 CPU cores: 1/8 width VGG16 with BatchNorm, K=32, 256-d output;
# a 128 px satellite input covering 70 m (0.55 m/px) and a 64x352 panorama (CVUSA's 1:5.5).
CPU_PREPROCESSING = Preprocessing(sat_size=128, grd_size=(64, 352), sat_ground_m=70.0)


def preset_config(arch: str, preset: str) -> ModelConfig:
    """The configuration of `arch` under a named preset ("paper" or "cpu")."""
    if preset == "paper":
        return ModelConfig(
            arch=arch,
            preset="paper",
            preprocessing=PAPER_PREPROCESSING,
            normalize_output=(arch == "cvm-net-i"),
        )
    if preset == "cpu":
        return ModelConfig(
            arch=arch,
            preset="cpu",
            preprocessing=CPU_PREPROCESSING,
            width_div=8,
            batchnorm=True,
            num_clusters=32,
            out_dim=256,
            normalize_output=True,
            # Trained from scratch here: no pretrained blocks to freeze, and an init that learns.
            frozen_blocks=0,
            init="kaiming",
        )
    raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
