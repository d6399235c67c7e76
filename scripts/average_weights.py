"""Average the weights of checkpoints fine-tuned from the same start ("model soup", Wortsman et
al., ICML 2022): every parameter and BatchNorm statistic is the mean over the inputs.

    .venv/bin/python scripts/average_weights.py A.pt B.pt [C.pt ...] --out SOUP.pt

The inputs must share their model config (architecture and preprocessing; test-time options may
differ, the first input's are kept). The result is a plain checkpoint for `cvm eval` and
`scripts/export_weights.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.centering import clear_centers
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from model.train import trained_part
from model.views import set_inference_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", type=Path, nargs="+", help="checkpoints to average (at least two)")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged checkpoint")
    args = p.parse_args()
    if len(args.inputs) < 2:
        p.error("give at least two checkpoints")
    try:
        loaded = [load_checkpoint(path) for path in args.inputs]
    except CheckpointError as exc:
        raise SystemExit(f"average_weights: {exc}") from exc
    first = loaded[0]
    for other in loaded[1:]:
        if trained_part(other.config) != trained_part(first.config):
            raise SystemExit(f"{other.path}: its model config differs from {first.path}'s")
    states = [m.model.state_dict() for m in loaded]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key] for s in states]).mean(dim=0)
        else:  # e.g. BatchNorm's num_batches_tracked: not averaged, kept from the first
            averaged[key] = value
    first.model.load_state_dict(averaged)
    # Means measured for each input do not describe their average: measure them again.
    clear_centers(first.model)
    set_inference_options(first.model, centered=False)
    sources = [f"{path} (sha256 {file_sha256(path)[:12]})" for path in args.inputs]
    save_checkpoint(args.out, first.model, train_config={"averaged_from": sources})
    print(f"wrote {args.out}: mean of {len(sources)} checkpoints, sha256 {file_sha256(args.out)}")


if __name__ == "__main__":
    main()
