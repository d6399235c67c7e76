"""The ground branch of one loaded CVM-Net with its preprocessing: image bytes -> descriptor.

All torch code of the service lives here; it is blocking and runs in worker threads.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import LoadedModel, file_sha256, load_checkpoint
from model.config import ModelConfig, Preprocessing
from model.transforms import heading_inputs, input_size, prepare_ground, prepare_photo
from service.calibration import Calibration, check_fits_model, load_calibration, sidecar_path
from service.imaging import decode_upload, kind_of_size

KINDS = ("panorama", "photo")


class Localizer:
    """Decodes, preprocesses and embeds ground images with the served weights."""

    def __init__(
        self,
        loaded: LoadedModel,
        weights_sha256: str,
        max_pixels: int,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = loaded.model.eval()
        # The confidence model of the location estimate (`service.calibration`), fitted for these weights.
        self.calibration = calibration
        self.config: ModelConfig = loaded.config
        self.weights_path = Path(loaded.path)
        self.weights_sha256 = weights_sha256
        self.max_pixels = max_pixels
        self.device = next(self.model.parameters()).device
        self.forward_calls = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu", max_pixels: int = 40_000_000) -> Localizer:
        """Load weights through the one checkpoint loader (raises CheckpointError naming the file)."""
        loaded = load_checkpoint(path, device=device)
        sha = file_sha256(path)
        # The calibration sidecar beside the weights (CheckpointError naming it when unreadable).
        calibration = load_calibration(Path(path), sha)
        check_fits_model(calibration, loaded.model, sidecar_path(Path(path)))
        return cls(loaded, sha, max_pixels, calibration)

    @property
    def preprocessing(self) -> Preprocessing:
        """How inputs must be prepared for these weights."""
        return self.config.preprocessing

    @property
    def out_dim(self) -> int:
        """Descriptor size d."""
        return int(self.config.descriptor_dim)

    def prepare(self, data: bytes, kind: str | None) -> tuple[torch.Tensor, str, float, float]:
        """Bytes -> ((m, 3, H, W) float32 input, kind used, decode seconds, preprocess seconds).

        `kind` None means: detect from the aspect ratio (width / height >= 3 -> panorama).
        m is 1, except for a photo under weights whose preprocessing tries it at
        `photo_headings` headings (one input per heading, `heading_inputs`).
        Raises the image errors of `service.imaging`.
        """
        if kind not in (None, *KINDS):
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        # The kind follows from the full size in the header; the decoder may then shrink a large
        # JPEG towards the input size of that kind (the shrunk size could flip a borderline aspect).
        chosen: list[str] = []

        def fit(width: int, height: int) -> tuple[int, int]:
            chosen.append(kind or kind_of_size(width, height))
            return input_size(width, height, self.preprocessing, chosen[0])

        t0 = time.perf_counter()
        rgb = decode_upload(data, self.max_pixels, fit)
        t1 = time.perf_counter()
        used = chosen[0]
        if used == "panorama":
            x = prepare_ground(rgb, self.preprocessing)[None]
        else:
            x = heading_inputs(
                prepare_photo(rgb, self.preprocessing)[None], self.preprocessing.photo_headings
            )
        return x, used, t1 - t0, time.perf_counter() - t1

    def embed(self, batch: torch.Tensor, photo: bool | torch.Tensor = False) -> np.ndarray:
        """(b, 3, H, W) float32 -> (b, d) float32 descriptors (L2-normalised by the model).
        `photo`: whether the inputs are ordinary photos' canvases, all or a (b,) bool mask."""
        with self._count_lock:
            self.forward_calls += 1
        with torch.inference_mode():
            out = self.model.describe_ground(batch.to(self.device), photo=photo)
        return out.float().cpu().numpy()
