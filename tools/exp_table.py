"""`dvc exp show --only-changed`, turned on its side: one row per param or metric whose value
differs between the experiments, one column per experiment, and no dependency hashes.

    python tools/exp_table.py                      # HEAD and its experiments (make exp)
    python tools/exp_table.py --rev <commit> -n 3  # experiments of another baseline, 3 commits

DVC's table has a column per param, metric and dependency: for one shift experiment against its
baseline, 26 columns and 771 characters of Markdown even with --only-changed; in a 120-character
terminal it shows two metric columns and folds the rest into "…". A handful of experiments side
by side fits a terminal.
"""

from __future__ import annotations

import argparse
import sys

from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.repo.experiments.show import tabulate

KINDS = ("params", "metrics")  # the values an experiment changes, then what it measured
PRECISION = 5  # digits after the point, as `dvc exp show` rounds them


def experiment_rows(rev: str | None, num: int, hide_workspace: bool) -> tuple[list[dict], dict[str, list[str]]]:
    """DVC's own `exp show` rows (one dict per experiment, values formatted as DVC prints them)
    and its column names by kind: params, metrics, deps."""
    with Repo() as repo:
        states = repo.experiments.show(revs=rev, num=num, hide_queued=True, hide_workspace=hide_workspace)
        table, columns = tabulate(states, precision=PRECISION, fill_value="-")
    return table.as_dict(), columns


def column_name(row: dict) -> str:
    """An experiment's name, else its commit (or `workspace`)."""
    return row["Experiment"] or row["rev"]


def changed_rows(rows: list[dict], columns: dict[str, list[str]]) -> list[tuple[str, str, list[str]]]:
    """(kind, name, one value per experiment) for each param and metric that differs."""
    changed = []
    for kind in KINDS:
        for name in columns.get(kind, []):
            values = [str(row.get(name, "-")) for row in rows]
            if len(set(values)) > 1:
                changed.append((kind[:-1], name, values))
    return changed


def markdown(header: list[str], body: list[list[str]]) -> str:
    """A GitHub Markdown table, each column as wide as its widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="baseline commit whose experiments to show (default: HEAD)")
    parser.add_argument("-n", "--num", type=int, default=1, help="that many commits back from the baseline")
    parser.add_argument("--hide-workspace", action="store_true", help="leave out the workspace column")
    args = parser.parse_args(argv)
    try:
        rows, columns = experiment_rows(args.rev, args.num, args.hide_workspace)
    except DvcException as error:
        print(f"exp_table: error: {error}", file=sys.stderr)
        return 2
    names = [column_name(row) for row in rows]
    changed = changed_rows(rows, columns)
    if not changed:
        print(f"no param or metric differs between {', '.join(names)} (run `dvc exp run -S key=value` first)")
        return 0
    print(markdown(["", "", *names], [[kind, name, *values] for kind, name, values in changed]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
