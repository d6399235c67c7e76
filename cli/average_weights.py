"""`cvm average-weights`: average the weights of checkpoints fine-tuned from the same start
("model soup", Wortsman et al., ICML 2022): every parameter and BatchNorm
statistic is the mean over the inputs.

    .venv/bin/cvm average-weights A.pt B.pt [C.pt ...] --out SOUP.pt

The inputs must share their model config (architecture and preprocessing; test-time options may
differ, the first input's are kept). The result is a plain checkpoint for `cvm eval` and
`cvm export-weights`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.centering import clear_centers
from model.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from model.train import trained_part
from model.views import set_inference_options

HELP = "average checkpoints fine-tuned from the same start (a model soup)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", type=Path, nargs="+", help="checkpoints to average (at least two)")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged checkpoint")


def run(args: argparse.Namespace) -> int:
    if len(args.inputs) < 2:
        print("cvm average-weights: give at least two checkpoints", file=sys.stderr)
        return 2
    try:
        loaded = [load_checkpoint(path) for path in args.inputs]
    except CheckpointError as exc:
        print(f"cvm average-weights: {exc}", file=sys.stderr)
        return 1
    first = loaded[0]
    for other in loaded[1:]:
        if trained_part(other.config) != trained_part(first.config):
            print(
                f"cvm average-weights: {other.path}: its model config differs from {first.path}'s",
                file=sys.stderr,
            )
            return 1
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
    return 0
