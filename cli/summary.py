"""`cvm summary`: parameter counts and feature-map shapes of an architecture under a preset."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from model.config import ARCHS, PRESETS, preset_config
from model.summary import format_summary, summarize

HELP = "print parameter counts and conv5_3 feature-map shapes of a CVM-Net configuration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHS, default="cvm-net-i", help="network variant")
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="configuration preset")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    summary = summarize(preset_config(args.arch, args.preset))
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    return 0
