"""shiftwatch COMMAND ... (or python -m shiftwatch): the command line outside the DVC pipeline.

Each command is a module with HELP, add_arguments(parser) and run(args) -> exit status;
add one to COMMANDS. Modules import their heavy dependencies (torch, MLflow) lazily, so
`--help` answers at once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from shiftwatch.commands import check, serve, timeline

COMMANDS = {"check": check, "timeline": timeline, "serve": serve}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftwatch",
        description="shiftwatch: detect distribution shift in image batches "
        "(the pipeline itself runs with `dvc repro`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; returns its exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as err:
        if not _from_tracking_store(err):
            raise
        from shiftwatch.tracking.store import one_line, tracking_uri

        print(
            f"shiftwatch {args.command}: error: the MLflow tracking store at {tracking_uri()} failed "
            f"({one_line(err)}); check that it runs, or unset MLFLOW_TRACKING_URI",
            file=sys.stderr,
        )
        return 2


def _from_tracking_store(err: Exception) -> bool:
    """An MLflow or HTTP error (a server that went away mid-command): one line, not a traceback."""
    names = {klass.__module__.split(".")[0] for klass in type(err).__mro__}
    return bool(names & {"mlflow", "requests", "urllib3"})


def entry_point() -> None:
    """The `shiftwatch` console script (pyproject.toml)."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("shiftwatch: interrupted", file=sys.stderr)
        status = 130
    exit_now(status)


def exit_now(status: int) -> NoReturn:
    """Exit without the interpreter's teardown: after `check` has imported torch and
    torchvision, freeing their modules one by one takes ~1.2 s of a ~9 s cold check, for
    nothing. What that teardown would still do for us is done first: the atexit handlers
    (MLflow, logging), then stdout and stderr flushed. A failed flush of stdout (disk full) is
    one line on stderr and status 2 (Python's own exit gives 120). With a non-daemon thread
    still running (Python waits for those) the exit is the usual one; so is any exit from
    inside `main` (argparse's, an uncaught error's traceback)."""
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()  # CPython's own exit path runs these; os._exit would skip them
    try:
        sys.stdout.flush()
    except OSError as err:  # disk full, a reader gone: never pass a gate with a cut report
        status = 2
        with contextlib.suppress(OSError, ValueError):
            print(f"shiftwatch: error: standard output: cannot write ({err.strerror or err})", file=sys.stderr)
    except ValueError:  # stdout closed on purpose: nothing left to write
        pass
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


def _version() -> str:
    try:
        return version("shiftwatch")
    except PackageNotFoundError:  # run from a checkout without `pip install -e .`
        return "(not installed)"


if __name__ == "__main__":
    entry_point()
