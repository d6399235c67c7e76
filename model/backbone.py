"""VGG16 convolutional trunk (conv1_1 .. conv5_3, no pool5) used by both CVM-Net branches.

Layout of the original `VGG.py`: five blocks of 3x3/stride-1/pad-1 convs with ReLU, a 2x2 max-pool
after blocks 1-4, Dropout after the ReLU of every conv in blocks 4 and 5. Widths are divided by
`ModelConfig.width_div`; `ModelConfig.batchnorm` inserts BatchNorm between each conv and its ReLU.

Frozen blocks (`ModelConfig.frozen_blocks`) have `requires_grad=False` and are kept in eval mode
even while the model trains, so that BatchNorm statistics of a frozen block are frozen too
(frozen means "a fixed function of the input"; the paper preset has no BatchNorm, so this only
matters for custom configurations).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import ModelConfig, Preprocessing

# (output channels at full width, convs per block) for VGG16 configuration "D".
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# Blocks 4 and 5 carry dropout after each conv (the original's keep_prob 0.8 -> p 0.2).
DROPOUT_BLOCKS = (3, 4)

# torchvision's VGG16 weights expect RGB in [0, 1] normalised with ImageNet mean/std; expressed
# on the 0-255 scale used by `model.transforms` that is (x - 255*mean) / (255*std).
TORCHVISION_RGB_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
TORCHVISION_RGB_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


class BackboneWeightsError(ValueError):
    """A VGG16 weights file is missing, unreadable or does not fit the backbone (names the file)."""


class VGG16Conv5(nn.Module):
    """VGG16 conv1_1..conv5_3 at 1/width_div width.

    forward: (b, 3, H, W) float -> (b, 512/width_div, H/16, W/16) local features (conv5_3 after
    ReLU and dropout). H and W must be multiples of 16.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.frozen_blocks = cfg.frozen_blocks
        blocks: list[nn.Sequential] = []
        cin = 3
        for b, (width, n_convs) in enumerate(VGG16_BLOCKS):
            layers: list[nn.Module] = []
            cout = width // cfg.width_div
            for _ in range(n_convs):
                layers += conv_unit(cin, cout, 3, cfg.batchnorm, cfg.dropout if b in DROPOUT_BLOCKS else 0.0)
                cin = cout
            if b < len(VGG16_BLOCKS) - 1:
                layers.append(nn.MaxPool2d(2, 2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        for block in self.blocks[: self.frozen_blocks]:
            block.requires_grad_(False)

    def train(self, mode: bool = True) -> VGG16Conv5:
        super().train(mode)
        for block in self.blocks[: self.frozen_blocks]:
            block.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) -> (b, C, H/16, W/16)."""
        for block in self.blocks:
            x = block(x)
        return x

    def convs(self) -> list[nn.Conv2d]:
        """The 13 convolutions in network order (conv1_1 .. conv5_3)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def batchnorms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm layers in network order (empty without BatchNorm)."""
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]


def conv_unit(cin: int, cout: int, kernel: int, batchnorm: bool, dropout: float) -> list[nn.Module]:
    """conv (stride 1, 'same' padding) [-> BatchNorm] -> ReLU [-> Dropout]."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout(p=dropout))
    return layers


def init_conv_original(conv: nn.Conv2d) -> None:
    """The original's TF initialisers: Xavier-uniform weights, and Xavier-uniform biases too
    (TF treats a 1-D bias of n entries as fan_in = fan_out = n, so the bound is sqrt(3/n))."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        bound = (3.0 / conv.bias.numel()) ** 0.5
        nn.init.uniform_(conv.bias, -bound, bound)


def init_conv_kaiming(conv: nn.Conv2d) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero bias: trains from scratch with BatchNorm."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_convs(module: nn.Module, init: str) -> None:
    """Initialise every Conv2d / BatchNorm2d inside `module` with the named scheme."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            (init_conv_kaiming if init == "kaiming" else init_conv_original)(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def torchvision_preprocessing(prep: Preprocessing) -> Preprocessing:
    """`prep` switched to the input convention of torchvision's VGG16 weights (RGB, ImageNet
    mean and std on the 0-255 scale). Sizes and geometry are kept."""
    return replace(prep, channel_order="RGB", mean=TORCHVISION_RGB_MEAN, std=TORCHVISION_RGB_STD)


def config_for_torchvision_weights(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the preprocessing that torchvision VGG16 weights expect (see
    `torchvision_preprocessing`); use it to build a model that `load_vgg16_backbone_weights` fills."""
    return replace(cfg, preprocessing=torchvision_preprocessing(cfg.preprocessing))


def _torchvision_conv_indices(batchnorm: bool) -> list[int]:
    """Indices of the 13 convs inside torchvision's `vgg16[_bn].features` Sequential."""
    indices, i = [], 0
    for _, n_convs in VGG16_BLOCKS:
        for _ in range(n_convs):
            indices.append(i)
            i += 3 if batchnorm else 2  # conv [, bn], relu
        i += 1  # max-pool (torchvision also has pool5, which is simply never read)
    return indices


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"VGG16 weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise BackboneWeightsError(f"cannot read VGG16 weights {path}: {exc}") from exc
    if not isinstance(sd, dict):
        raise BackboneWeightsError(f"{path} does not hold a state_dict (got {type(sd).__name__})")
    return sd


# `format` of the project's own checkpoints (`model.checkpoint.FORMAT`; not imported from there,
# which imports this module).
PROJECT_FORMAT = "cvm-geoloc/1"
BRANCHES = ("ground", "satellite")


def project_checkpoint_preprocessing(path: str | Path) -> Preprocessing | None:
    """The preprocessing stored in `path` when it is one of the project's checkpoints (e.g. the
    original's `*_init` weights brought in by `cvm import-tf`), None for a torchvision file. A
    backbone initialised from such a checkpoint expects its input normalisation."""
    sd: dict[str, Any] = _read_state_dict(Path(path))
    if sd.get("format") != PROJECT_FORMAT:
        return None
    try:
        return Preprocessing.from_dict(sd["config"]["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BackboneWeightsError(f"{path}: malformed checkpoint config ({exc})") from None


def _load_from_project_checkpoint(
    backbone: VGG16Conv5, path: Path, sd: dict[str, torch.Tensor], branch: str
) -> None:
    """Copy the `branch` VGG16 of a project checkpoint (its `vgg_ground.*` / `vgg_satellite.*`)."""
    weights = sd.get("state_dict")
    if branch not in BRANCHES or not isinstance(weights, dict):
        raise BackboneWeightsError(f"{path}: no {branch} backbone in this checkpoint")
    prefix = f"vgg_{branch}."
    with torch.no_grad():
        for key, tensor in backbone.state_dict(keep_vars=True).items():
            source = weights.get(prefix + key)
            if source is None:
                raise BackboneWeightsError(f"{path}: missing {prefix + key} (not a VGG16 of this layout)")
            if tuple(source.shape) != tuple(tensor.shape):
                raise BackboneWeightsError(
                    f"{path}: {prefix + key} has shape {tuple(source.shape)}, the backbone expects "
                    f"{tuple(tensor.shape)}"
                )
            tensor.copy_(source)


def load_vgg16_backbone_weights(backbone: VGG16Conv5, path: str | Path, branch: str = "ground") -> None:
    """Copy a torchvision VGG16 (or VGG16-BN, matching `backbone`'s BatchNorm) state_dict file
    into a full-width `backbone`; or, from one of the project's checkpoints (such as the original's
    `*_init` weights imported by `cvm import-tf`), its `branch` ("ground" / "satellite") VGG16,
    whose input normalisation `project_checkpoint_preprocessing` gives.

    The file holds keys `features.N.weight` / `features.N.bias` (a whole-model state_dict or a
    `features` one whose keys carry that prefix); it is read with `weights_only=True`. The model
    using these weights must use `torchvision_preprocessing` (RGB, ImageNet mean/std).
    Raises BackboneWeightsError naming the file when it is missing, unreadable or mismatched.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    if sd.get("format") == PROJECT_FORMAT:
        _load_from_project_checkpoint(backbone, path, sd, branch)
        return
    batchnorm = bool(backbone.batchnorms())
    targets = _weight_targets(backbone, batchnorm)
    missing = [k for k in targets if k not in sd]
    if missing:
        raise BackboneWeightsError(
            f"{path} is not a torchvision vgg16{'_bn' if batchnorm else ''} state_dict: "
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    with torch.no_grad():
        for key, tensor in targets.items():
            if tuple(sd[key].shape) != tuple(tensor.shape):
                raise BackboneWeightsError(
                    f"{path}: {key} has shape {tuple(sd[key].shape)}, the backbone expects "
                    f"{tuple(tensor.shape)} (only a full-width backbone, width_div=1, fits)"
                )
            tensor.copy_(sd[key])


def _weight_targets(backbone: VGG16Conv5, batchnorm: bool) -> dict[str, torch.Tensor]:
    """torchvision key -> backbone tensor to fill."""
    targets: dict[str, torch.Tensor] = {}
    convs, bns = backbone.convs(), backbone.batchnorms()
    for j, idx in enumerate(_torchvision_conv_indices(batchnorm)):
        bias = convs[j].bias
        assert bias is not None  # every VGG conv has a bias
        targets[f"features.{idx}.weight"] = convs[j].weight
        targets[f"features.{idx}.bias"] = bias
        if batchnorm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                targets[f"features.{idx + 1}.{name}"] = getattr(bns[j], name)
    return targets
