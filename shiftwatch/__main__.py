"""python -m shiftwatch COMMAND ...: the project's command line outside the DVC pipeline.

Each command is a module with HELP, add_arguments(parser) and run(args) -> exit status;
add one to COMMANDS. Modules import their heavy dependencies (torch, MLflow) lazily, so
`--help` answers at once.
"""
from __future__ import annotations

import argparse
import sys

from shiftwatch import check

COMMANDS = {"check": check}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shiftwatch",
        description="shiftwatch: detect distribution shift in image batches "
                    "(the pipeline itself runs with `dvc repro`).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; returns its exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
