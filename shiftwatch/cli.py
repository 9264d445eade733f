"""The shared entry-point wrapper of the stage scripts: clear one-line errors, exit codes."""
from __future__ import annotations

import sys
from typing import Callable

from shiftwatch import ShiftwatchError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main(); a ShiftwatchError becomes one line on stderr and exit code 2."""
    try:
        main()
    except ShiftwatchError as err:
        print(f"shiftwatch {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
