"""The shared entry-point wrapper of the stage scripts: clear one-line errors, exit codes."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from shiftwatch import ShiftwatchError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main(); a ShiftwatchError becomes one line on stderr and exit code 2.

    On success the process ends with os._exit once stdout/stderr are flushed: every output is
    written and closed by then (atomic renames, the MLflow helper joined, worker pools shut
    down), and the interpreter's own teardown of torch and ~1.5 GB of arrays took ~1.2 s per
    stage, five times per experiment. Exit handlers do not run: a stage must not leave
    processes behind (no joblib/loky pools, whose workers would outlive it).
    """
    try:
        main()
    except ShiftwatchError as err:
        print(f"shiftwatch {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so none is half-written
        print(f"shiftwatch {name}: interrupted; no output is half-written, rerun the stage", file=sys.stderr)
        sys.exit(130)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
