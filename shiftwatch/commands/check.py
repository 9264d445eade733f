"""check: test a new batch of images for distribution shift against the saved reference.

    python -m shiftwatch check BATCH [--reference data/reference/test.npz]
                                     [--model models/resnet18.pt] [--params params.yaml]
                                     [--json OUT.json] [--log] [--quiet]

BATCH is an .npz (key `images`, or its only array) or .npy array of shape (N, H, W) or
(N, H, W, C) with C in 1..4 (RGB(A) is turned to gray with Pillow's luma weights), uint8
(0..255) or float in [0, 1]; or a folder of PNG/JPEG files (any size and mode: Pillow turns
each into 8-bit gray). Images not 28x28 are resized with antialiased bilinear interpolation.

The reference is the summary the `reference` stage saved for the held-out test set, made by
the same model (checked by md5); the check itself is shiftwatch/operations/check.py, reading the batch
shiftwatch/data/batch.py, the reports operations/text_report.py and operations/html_report.py, logging
tracking.checks.log_check.
No labels are needed: class proportions (BBSE, EM) and accuracy (ATC, average confidence) are
estimates.

Two answers (shiftwatch/operations/page.py): **harmful**, the page (the label-free accuracy estimate of
stage `harm` says the batch loses at least harm.page_points against the reference), and
**changed**, the Holm verdict of the change detectors, kept as information.

Exit status: 0 not harmful, 1 harmful (page), 2 bad input (one line on stderr, nothing
written); with --fail-on change, 3 when the batch changed but is not harmful. With
--confirm-with PREVIOUS.json, 1 only when the previous batch's report was harmful too. A --json or
--html path that cannot be written is bad input, found before the check runs (its folder is
probed with a file created and removed there). A write that fails anyway (disk full) or a --log
that cannot reach MLflow also gives 2 (one line on stderr), after the report is printed: a gate
never passes silently.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.data.batch import load_batch
from shiftwatch.operations.check import (
    DEFAULT_ESTIMATOR,
    DEFAULT_FINETUNED,
    DEFAULT_MODEL,
    DEFAULT_PARAMS,
    DEFAULT_REFERENCE,
    check_batch,
)
from shiftwatch.operations.page import FAIL_ON, confirm, exit_code, read_previous
from shiftwatch.operations.text_report import format_report

HELP = "check a batch of images for distribution shift against the saved reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "batch", metavar="BATCH", type=Path, help=".npz / .npy array of images, or a folder of PNG/JPEG files"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help=f"reference summary written by the reference stage (default: <repo root>/{DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH|models:/NAME@ALIAS",
        help=f"ResNet-18 state_dict (default: <repo root>/{DEFAULT_MODEL}), or a "
        "registered model in the MLflow store, e.g. models:/shiftwatch-resnet18@champion "
        "(downloaded once per version); the reference must have been made by it",
    )
    parser.add_argument(
        "--params", type=Path, default=None, help=f"params file (default: <repo root>/{DEFAULT_PARAMS})"
    )
    parser.add_argument(
        "--estimator",
        type=Path,
        default=None,
        help=f"accuracy estimator written by the harm stage (default: <repo root>/{DEFAULT_ESTIMATOR})",
    )
    parser.add_argument(
        "--finetuned",
        type=Path,
        default=None,
        help=f"the fine-tuned model the estimator compares with (default: <repo root>/{DEFAULT_FINETUNED})",
    )
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="harm",
        help="harm (default): exit 1 only when the batch is harmful; change: also exit 3 "
        "when it changed without harm (the change verdict's alarm)",
    )
    parser.add_argument(
        "--confirm-with",
        type=Path,
        default=None,
        metavar="PREVIOUS.json",
        help="page (exit 1) only when the previous batch's --json report says it was harmful "
        "too: two in a row (a missing file: the stream's first batch, not confirmed). "
        "It may be this run's own --json path: it is read before it is overwritten",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT.json",
        help="also write the report as JSON (atomically); `--json -` writes it to "
        "standard output instead of the human report",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="OUT.html",
        help="also write a self-contained HTML report (verdict, p-values, histograms, "
        "class mix, accuracy estimate, sample images)",
    )
    parser.add_argument(
        "--log",
        action="store_true",
        help="log params, metrics and the JSON report (and the HTML report with its "
        "figures) as an MLflow run in the experiment shiftwatch-checks "
        "(MLFLOW_TRACKING_URI, else <repo root>/mlflow.db)",
    )
    parser.add_argument(
        "--time",
        default=None,
        metavar="ISO-8601",
        help="when the batch was taken, e.g. 2026-11-29T14:00 (default: the batch "
        "file's or folder's modification time); the x axis of `shiftwatch timeline`",
    )
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="send the batch to a running `shiftwatch serve` (e.g. http://127.0.0.1:8765) "
        "instead of loading torch and the model here: the same report, in ~1 s",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing; use the exit status")


def run(args: argparse.Namespace) -> int:
    """The `check` command: 0 not harmful, 1 harmful, 2 bad input (one line on stderr), 3
    changed without harm (only with --fail-on change)."""
    started_ms = int(time.time() * 1000)  # the --log run's start: its duration is the check's
    to_stdout = args.json is not None and str(args.json) == "-"
    quiet = args.quiet or to_stdout  # standard output carries the JSON alone
    outputs = {"--json": None if to_stdout else args.json, "--html": args.html}
    try:
        for option, path in outputs.items():
            if path is not None:
                writable(option, path)
        taken = batch_time(args.batch, args.time)
        previous = None if args.confirm_with is None else read_previous(args.confirm_with)
        if args.log:  # a server that does not answer is found before the check, in seconds
            from shiftwatch.tracking.store import require_store

            require_store()
        if args.server:
            report, views = _check_on_server(args.server, args.batch, want_views=args.html is not None)
        else:
            report, views = check_batch(
                args.batch,
                reference=args.reference,
                model=args.model,
                params=args.params,
                estimator=args.estimator,
                finetuned=args.finetuned,
                progress=not quiet,
            )
        report["batch"]["time"] = taken
        if args.confirm_with is not None:
            confirm(report, previous, args.confirm_with)
    except ShiftwatchError as err:
        print(f"shiftwatch check: error: {err}", file=sys.stderr)
        return 2
    try:
        if not quiet:
            print(format_report(report))
        if to_stdout:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        pictures = _write_reports(outputs, report, views)
    except OSError as err:  # standard output: disk full, a reader gone (files raise ShiftwatchError)
        where = "--json -" if to_stdout else "standard output"
        print(f"shiftwatch check: error: {where}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 2
    except ShiftwatchError as err:
        print(f"shiftwatch check: error: {err}", file=sys.stderr)
        return 2
    if args.log:
        try:
            from shiftwatch.tracking.checks import log_check

            run_id = log_check(report, report["params"], started_ms, html=args.html, pictures=pictures)
        except Exception as err:  # MlflowException, sqlite errors: the check itself is done
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(
                f"shiftwatch check: error: --log: could not log to MLflow ({first}); check MLFLOW_TRACKING_URI",
                file=sys.stderr,
            )
            return 2
        if not quiet:
            print(f"logged: MLflow run {run_id}")
    return exit_code(report, args.fail_on)


def writable(option: str, path: Path) -> None:
    """Refuse an output path before the check's seconds are spent: not a folder, and its
    nearest existing folder takes a new file (the atomic write's temporary file goes there)."""
    try:
        if path.is_dir():
            raise ShiftwatchError(
                f"{option} {path}: is a folder; give a file name such as {path / ('check.' + option[2:])}"
            )
        folder = path.parent
        while not folder.exists():  # the writer creates missing folders: they must go in here
            folder = folder.parent
        if not folder.is_dir():
            raise ShiftwatchError(
                f"{option} {path}: cannot write ({folder} is a file, not a folder); pick a writable path"
            )
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:  # no permission to look or to create, read-only file system, ...
        raise ShiftwatchError(f"{option} {path}: cannot write ({err.strerror or err}); pick a writable path") from None


def _write_reports(outputs: dict, report: dict, views) -> dict | None:
    """Write the --json and --html files; returns the HTML report's figures (for --log).
    A failed write raises ShiftwatchError naming the user's path, not the temporary file."""
    pictures = None
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            if option == "--json":
                from shiftwatch.core.io import write_json

                write_json(path, report)
            else:
                from shiftwatch.operations import html_report

                pictures = html_report.write(path, report, views)
        except OSError as err:
            raise ShiftwatchError(
                f"{option} {path}: cannot write ({err.strerror or err}); pick a writable path"
            ) from None
    return pictures


def _check_on_server(url: str, batch: Path, want_views: bool):
    """The batch is read here and checked by `shiftwatch serve` at `url` (no torch imported)."""
    from shiftwatch.commands.serve import request_check

    started = time.perf_counter()
    images, batch_info = load_batch(batch)
    loaded = time.perf_counter()
    report, views = request_check(url, images, {"path": str(batch), **batch_info}, views=want_views)
    report["seconds"].update(
        {"load": loaded - started, "imports": 0.0, "model": 0.0, "total": time.perf_counter() - started}
    )
    report["server"] = url
    if views is None:
        return report, None
    from shiftwatch.operations.html_report import Views

    return report, Views(**{name: np.asarray(values, dtype=float) for name, values in views.items()})


def batch_time(batch: Path, given: str | None) -> str:
    """When the batch was taken, ISO 8601 with a UTC offset: `given` (--time; a time without
    an offset is taken as UTC), else the modification time of the batch file or folder."""
    if given is None:
        if not batch.exists():
            raise ShiftwatchError(f"{batch}: not found; pass a .npz/.npy file or a folder of images")
        return datetime.fromtimestamp(batch.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return parse_time(given, "--time").isoformat(timespec="seconds")


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time from the command line (`option` names it in the error); a time
    without a UTC offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ShiftwatchError(
            f"{option} {text!r}: not an ISO 8601 time; use e.g. 2026-11-29T14:00 or 2026-11-29T14:00+01:00"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
