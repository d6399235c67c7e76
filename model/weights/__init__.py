"""Location of the checkpoint shipped with the package (CVM-Net-I, cpu preset)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_WEIGHTS_NAME = "cvm-net-i-cpu.pt"


def default_weights_path() -> Path:
    """Path of the shipped checkpoint `model/weights/cvm-net-i-cpu.pt`.

    Raises FileNotFoundError with a hint when the file is absent (e.g. not trained yet).
    """
    path = Path(__file__).resolve().parent / DEFAULT_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped weights not found at {path}; train them with `cvm train` or point "
            "CVM_WEIGHTS at a checkpoint"
        )
    return path
