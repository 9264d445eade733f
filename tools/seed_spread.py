"""How sure is the headline? The same data and params, trained with several `train.seed`s.

Queues one DVC experiment per training seed (`dvc exp run --queue -S train.seed=S`), runs the
queue (`dvc queue start`), waits, reads the experiments' headline metrics back from
`dvc exp show --json`, and writes metrics/seed_spread.json: per headline number the value of
each seed, the mean and the sample standard deviation. `make readme` turns it into the
"seeds" table of docs/results.md. The data stages (prepare, shift, detect) do not read train.seed and
are identical across the runs; everything downstream of `train` varies.

Usage (from the repository root, after `dvc repro`): python tools/seed_spread.py [--seeds 42 1 2]
[--collect: only read back experiments that already ran]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

OUT = Path("metrics/seed_spread.json")
HEADLINE = {  # metrics file -> dotted keys reported
    "metrics/evaluate.json": [
        "accuracy.test",
        "accuracy.b_covariate",
        "accuracy.b_label",
        "accuracy.b_shift",
        "class_7_b_shift.precision",
        "class_7_b_shift.recall",
        "class_7_b_shift.f1",
    ],
    "metrics/monitor.json": [
        "b_shift.page",
        "b_shift.estimated_loss_points",
        "b_shift.class_7_share_bbse",
        "b_shift.drift",
        "b_label.drift",
    ],
    "metrics/mitigate.json": ["b_shift_accuracy.none", "b_shift_accuracy.adabn", "b_shift_accuracy.finetune_augmented"],
    "metrics/detect.json": ["b_shift.domain_auc", "b_label.drift"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument(
        "--collect", action="store_true", help="only read back experiments that already ran (no queueing)"
    )
    args = parser.parse_args()
    names = {seed: f"train-seed-{seed}" for seed in args.seeds}
    if not args.collect:
        existing = _experiments()
        for seed, name in names.items():
            if name in existing:
                subprocess.run(["dvc", "exp", "remove", name], check=True)
            subprocess.run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}"], check=True)
        subprocess.run(["dvc", "queue", "start"], check=True)
        _wait()
    found = _experiments()
    missing = [name for name in names.values() if name not in found]
    if missing:
        raise SystemExit(f"seed_spread: experiments {missing} did not finish; see `dvc queue status`")
    table = {}
    for path, keys in HEADLINE.items():
        for key in keys:
            values = {seed: _lookup(found[name].get(path, {}), key) for seed, name in names.items()}
            numbers = [v for v in values.values() if v is not None]
            table[f"{Path(path).stem}.{key}"] = {
                "by_seed": {str(s): v for s, v in values.items()},
                "mean": statistics.fmean(numbers) if numbers else None,
                "sd": statistics.stdev(numbers) if len(numbers) > 1 else None,
            }
    OUT.write_text(json.dumps({"seeds": args.seeds, "metrics": table}, indent=2) + "\n")
    print(f"seed_spread: {len(table)} headline numbers over seeds {args.seeds} -> {OUT}")


def _experiments() -> dict[str, dict]:
    """{experiment name: {metrics file: its data}} for the experiments of every commit."""
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json", "--all-commits"], capture_output=True, text=True, check=True
        ).stdout
    )
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("name"):
                    found[rev["name"]] = {
                        path: (m or {}).get("data", {}) for path, m in (data.get("metrics") or {}).items()
                    }
    return found


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _wait(limit: float = 4 * 3600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return
        time.sleep(10)
    raise SystemExit("seed_spread: the queue is still busy; see `dvc queue status`")


if __name__ == "__main__":
    main()
