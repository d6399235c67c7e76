"""`cvm`: the user and research command line.

Each sub-command lives in its own module of this package that exposes `HELP`,
`add_arguments(parser)` and `run(args) -> int`; this file only dispatches. The modules import
their heavy dependencies inside `run`, so that `cvm --help` stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from cli import (
    average_weights,
    calibrate,
    center_weights,
    embed,
    eval_service,
    evaluate,
    export_weights,
    gallery,
    import_tf,
    localize,
    serve,
    summary,
    synth,
    train,
)
from model.runtime import reuse_freed_memory

COMMANDS: dict[str, ModuleType] = {
    "summary": summary,
    "train": train,
    "eval": evaluate,
    "eval-service": eval_service,
    "calibrate": calibrate,
    "synth": synth,
    "serve": serve,
    "localize": localize,
    "average-weights": average_weights,
    "export-weights": export_weights,
    "center-weights": center_weights,
    "import-tf": import_tf,
    "embed": embed,
    "gallery": gallery,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # training, evaluation and serving repeat forward passes
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
