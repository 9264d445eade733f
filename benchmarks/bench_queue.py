"""Parallel queue workers on the default SQLite store: do runs get lost, and what does -j 2 buy?

In one fresh temp copy of the repository on the tests' small configuration: `dvc repro`, then
four queued experiments with `dvc queue start -j 2`, then four more with `-j 1`, all against the
embedded store (`mlflow.db`). Counts the stage runs that landed per experiment through MLflow's
API (each should have its five shift stages and one parent, FINISHED), greps the queue logs for
SQLite's "database is locked", and times both queues. tests/test_team_server.py does the -j 2
case against a PostgreSQL-backed server.

Usage (repository root): PYTHONPATH=tests python benchmarks/bench_queue.py   -> benchmarks/queue.json
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

from test_pipeline import SHIFT_STAGES, _copy_repo, _dvc, _run, _small_params  # tests/ on PYTHONPATH (make bench)

REPO = Path(__file__).resolve().parents[1]

BATCHES = {"parallel": (2, ("0.0", "0.05", "0.15", "0.2")), "serial": (1, ("0.01", "0.06", "0.16", "0.21"))}


def main() -> None:
    from mlflow import MlflowClient

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = _copy_repo(Path(tmp))
        _small_params(repo)
        _run(repo, "git", "init", "-q", "-b", "main")
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "commit", "-qm", "small configuration")
        _dvc(repo, "repro")
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "commit", "-qm", "baseline results")
        for label, (workers, values) in BATCHES.items():
            names = [f"{label}-{v}" for v in values]
            for value, name in zip(values, names):
                _dvc(repo, "exp", "run", "--queue", "-S", f"shift.brightness={value}", "--name", name)
            started = time.monotonic()
            _dvc(repo, "queue", "start", "-j", str(workers))
            while re.search(r"\b(Queued|Running)\b", _dvc(repo, "queue", "status").stdout):
                time.sleep(5)
            seconds = time.monotonic() - started
            status = _dvc(repo, "queue", "status").stdout
            logs = "".join(_dvc(repo, "queue", "logs", name, check=False).stdout for name in names)
            client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
            experiment = client.get_experiment_by_name("shiftwatch")
            runs = client.search_runs([experiment.experiment_id], max_results=10_000)
            landed = {
                name: sorted(
                    r.data.tags.get("dvc.stage", "pipeline")
                    for r in runs
                    if r.data.tags.get("dvc.exp_name") == name and r.info.status == "FINISHED"
                )
                for name in names
            }
            expected = sorted(("pipeline", *SHIFT_STAGES))
            results[label] = {
                "workers": workers,
                "experiments": len(names),
                "seconds": seconds,
                "succeeded": sum(
                    name in line.split() and "Success" in line for name in names for line in status.splitlines()
                ),
                "runs_expected": len(names) * len(expected),
                "runs_landed": sum(len(v) for v in landed.values()),
                "complete_experiments": sum(v == expected for v in landed.values()),
                "database_locked_messages": logs.count("database is locked"),
            }
            print(f"{label} (-j {workers}): {seconds:.0f} s, {results[label]}", flush=True)
    results["parallel_over_serial"] = results["parallel"]["seconds"] / results["serial"]["seconds"]
    (REPO / "benchmarks" / "queue.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"-j 2 took {results['parallel_over_serial']:.2f}x the time of -j 1")


if __name__ == "__main__":
    main()
