"""`cvm`: the user and research command line (summary, train, eval, synth, serve, localize).

Each sub-command lives in its own module that exposes `HELP`, `add_arguments(parser)` and
`run(args) -> int`; this file only dispatches, so that `cvm --help` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from model.allocator import reuse_freed_memory

COMMANDS: dict[str, str] = {
    "summary": "model.commands.summary",
    "train": "model.commands.train",
    "eval": "model.commands.evaluate",
    "synth": "model.synth.cli",
    "serve": "service.cli_serve",
    "localize": "service.cli_localize",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # training and evaluation repeat forward passes
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
