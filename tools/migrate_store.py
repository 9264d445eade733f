"""Copy an MLflow history from one tracking store to another: the local mlflow.db of one
person's work to the team server (`make server`), keeping what the UI and the DVC tags need.

    python tools/migrate_store.py --to http://127.0.0.1:5050                 # from <repo>/mlflow.db
    python tools/migrate_store.py --from sqlite:///old/mlflow.db --to http://host:5050

Copied per run: name, status, start and end times, params, tags (parent links remapped to the
new run ids), every metric's full history (values, steps, timestamps), dataset inputs, and
artifacts. Per registered model: its versions (sources re-pointed at the copied runs, tags
kept) and aliases (@champion). Each copy is tagged shiftwatch.migrated_from = <source run
id>, so running the tool again copies only what is new. Not copied: MLflow 3's "logged
models" (the pt2 export that `train` logs next to the registry's state_dict); rerun
`dvc repro -f train` against the server if you need them there.

Why not mlflow-export-import: its PyPI release (1.2.0, 2023) predates MLflow 3; tried with
MLflow 3.17, importing into a SQL store fails on its second run ("Experiment already exists")
and `import-all` still exits 0, and through a server it resets every run's start/end time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from shiftwatch.tracking.store import _artifact_location, repo_root, store_client

MIGRATED_FROM = "shiftwatch.migrated_from"
PARENT = "mlflow.parentRunId"


def migrate(source_uri: str, target_uri: str, log=print) -> dict[str, int]:
    """Copy every experiment, run and registered model of `source_uri` that `target_uri` does
    not hold yet. Returns counts: runs and versions copied, and those already there."""
    source, target = store_client(source_uri), store_client(target_uri)
    counts = {"runs": 0, "runs_already_there": 0, "versions": 0, "versions_already_there": 0}
    new_ids: dict[str, str] = {}
    for experiment in source.search_experiments():
        target_id = _experiment(target, target_uri, experiment)
        runs = sorted(
            _all_runs(source, experiment.experiment_id), key=lambda r: (PARENT in r.data.tags, r.info.start_time)
        )  # parents first
        for run in runs:
            copied = _already_copied(target, target_id, run.info.run_id)
            if copied is not None:
                new_ids[run.info.run_id] = copied
                counts["runs_already_there"] += 1
                continue
            new_ids[run.info.run_id] = _copy_run(source, target, target_id, run, new_ids)
            counts["runs"] += 1
        log(f"experiment {experiment.name}: {len(runs)} runs")
    for model in source.search_registered_models():
        _copy_model(source, target, model, new_ids, counts)
    return counts


def _experiment(target, target_uri: str, experiment) -> str:
    found = target.get_experiment_by_name(experiment.name)
    if found is not None:
        return found.experiment_id
    return target.create_experiment(
        experiment.name, artifact_location=_artifact_location(target_uri), tags=experiment.tags
    )


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _already_copied(target, experiment_id: str, source_run_id: str) -> str | None:
    found = target.search_runs([experiment_id], f"tags.`{MIGRATED_FROM}` = '{source_run_id}'", max_results=1)
    return found[0].info.run_id if found else None


def _copy_run(source, target, experiment_id: str, run, new_ids: dict[str, str]) -> str:
    from mlflow.entities import Metric, Param

    tags = {**run.data.tags, MIGRATED_FROM: run.info.run_id}
    if PARENT in tags:
        tags[PARENT] = new_ids.get(tags[PARENT], tags[PARENT])
    copy = target.create_run(
        experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    ).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for start in range(0, len(params), 100):
        target.log_batch(copy, params=params[start : start + 100])
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in source.get_metric_history(run.info.run_id, key)
    ]
    for start in range(0, len(history), 1000):
        target.log_batch(copy, metrics=history[start : start + 1000])
    if run.inputs and run.inputs.dataset_inputs:
        target.log_inputs(copy, list(run.inputs.dataset_inputs))
    if source.list_artifacts(run.info.run_id):
        with tempfile.TemporaryDirectory() as folder:
            local = source.download_artifacts(run.info.run_id, "", folder)
            target.log_artifacts(copy, local)
    target.set_terminated(copy, run.info.status, end_time=run.info.end_time)
    return copy


def _copy_model(source, target, model, new_ids: dict[str, str], counts: dict[str, int]) -> None:
    from mlflow.exceptions import MlflowException

    try:
        target.create_registered_model(model.name, tags=model.tags, description=model.description)
    except MlflowException as err:  # already there: add what is missing
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    there = {v.tags.get(MIGRATED_FROM): v.version for v in target.search_model_versions(f"name = '{model.name}'")}
    numbers: dict[str, str] = {}
    for version in sorted(source.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)):
        key = f"{model.name}/{version.version}"
        if key in there:
            numbers[str(version.version)] = there[key]
            counts["versions_already_there"] += 1
            continue
        run_id = new_ids.get(version.run_id, version.run_id)
        source_uri = version.source.replace(f"runs:/{version.run_id}/", f"runs:/{run_id}/")
        copy = target.create_model_version(
            model.name,
            source=source_uri,
            run_id=run_id,
            tags={**version.tags, MIGRATED_FROM: key},
            description=version.description,
        )
        numbers[str(version.version)] = copy.version
        counts["versions"] += 1
    for alias, number in (model.aliases or {}).items():
        if str(number) in numbers:
            target.set_registered_model_alias(model.name, alias, numbers[str(number)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from", dest="source", default=None, help="source tracking URI (default: sqlite:///<repo root>/mlflow.db)"
    )
    parser.add_argument("--to", dest="target", required=True, help="target tracking URI, e.g. http://127.0.0.1:5050")
    args = parser.parse_args(argv)
    for name in ("mlflow.store.db.utils", "alembic"):  # a new SQLite store's set-up chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    source = args.source or f"sqlite:///{repo_root() / 'mlflow.db'}"
    if source.startswith("sqlite:///") and not Path(source[len("sqlite:///") :]).exists():
        print(f"migrate_store: error: {source}: no such store; pass --from", file=sys.stderr)
        return 2
    try:
        counts = migrate(source, args.target)
    except Exception as err:  # MlflowException, connection errors: one line, exit 2
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(
            f"migrate_store: error: {first}; rerun when the stores answer (what was copied stays, "
            "and is not copied twice)",
            file=sys.stderr,
        )
        return 2
    print(
        f"copied {counts['runs']} runs and {counts['versions']} model versions to {args.target} "
        f"({counts['runs_already_there']} runs, {counts['versions_already_there']} versions were already there)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
