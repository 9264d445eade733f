"""The shared entry-point wrapper of the stage scripts: clear one-line errors, exit codes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from shiftwatch import ShiftwatchError


class Terminated(Exception):
    """SIGTERM (a `timeout`, a CI cancel, `kill`): handled like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main(); a ShiftwatchError becomes one line on stderr and exit code 2, a
    failed write (disk full, read-only) one line naming the file, Ctrl-C exit 130 and SIGTERM
    exit 143, each with the stage's MLflow run closed as FAILED.

    On success the process ends with os._exit once stdout/stderr are flushed: every output is
    written and closed by then (atomic renames, the MLflow helper joined, worker pools shut
    down), and the interpreter's own teardown of torch and ~1.5 GB of arrays took ~1.2 s per
    stage, five times per experiment. Exit handlers do not run: a stage must not leave
    processes behind (no joblib/loky pools, whose workers would outlive it).
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit: an error to report, not a kill
    try:
        main()
    except ShiftwatchError as err:
        print(f"shiftwatch {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # outside the library's checks: name the file and the cause
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"shiftwatch {name}: error: {where}{err.strerror or err}; earlier outputs are kept, "
            "fix the cause and rerun the stage",
            file=sys.stderr,
        )
        sys.exit(2)
    except (KeyboardInterrupt, Terminated) as err:  # outputs are written atomically: none is half-written
        how, code = ("terminated (SIGTERM)", 143) if isinstance(err, Terminated) else ("interrupted", 130)
        print(f"shiftwatch {name}: {how}; no output is half-written, rerun the stage", file=sys.stderr)
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
