"""MLflow for every stage execution: one store at the repository root, one experiment,
one parent run per pipeline execution with a child run per stage.

Where the store is: MLFLOW_TRACKING_URI if set, else sqlite:///<repo root>/mlflow.db with
artifacts in <repo root>/mlartifacts. The repo root comes from DVC_ROOT or by walking up from
the working directory to dvc.yaml, and a queued experiment's temporary clone
(<root>/.dvc/tmp/exps/...) is mapped back to <root>, so queued runs land in the main store.

Grouping: the parent run is keyed by the DVC experiment name (or "workspace"), the git
commit and a hash of params.yaml. Each stage logs its own params, metrics and artifacts to
its child run and copies params and metrics to the parent, so comparing parents in the UI
shows detector scores, accuracies and class-7 numbers of one configuration side by side.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXPERIMENT = "shiftwatch"
PIPELINE_TAG = "shiftwatch.pipeline"


def repo_root(start: Path | None = None) -> Path:
    """The project root: DVC_ROOT, else the nearest folder above `start` holding dvc.yaml,
    with a queued experiment's temporary clone mapped back to the repository it came from."""
    if start is None:
        start = Path(os.environ.get("DVC_ROOT") or Path.cwd())
    start = start.resolve()
    root = next((p for p in (start, *start.parents) if (p / "dvc.yaml").exists()), start)
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store; a server or other store decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def _retry(call, attempts: int = 8):
    """SQLite allows one writer: parallel queue workers can see 'database is locked'."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # MlflowException wraps the OperationalError
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)


def _experiment_id(client, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))
    except MlflowException:  # created meanwhile by a concurrent stage
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_tags(stage: str) -> dict[str, str]:
    """Tags that lead from an MLflow run to its DVC experiment and commit, and back."""
    here = Path.cwd()
    return {
        "dvc.stage": stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", git_commit(here)),
        "git.commit": git_commit(here),
    }


def pipeline_key(params_json: str, tags: dict[str, str]) -> str:
    params_hash = hashlib.sha256(params_json.encode()).hexdigest()[:12]
    return f"{tags['dvc.exp_name']}@{tags['git.commit'][:12]}#{params_hash}"


def flatten_numbers(tree: dict, prefix: str) -> dict[str, float]:
    """{'b_shift': {'ks_pvalue': 0.01}} -> {'<prefix>.b_shift.ks_pvalue': 0.01}; non-numbers dropped."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{prefix}.{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}.{key}"] = value
    return flat


class StageRun:
    """What a stage script logs through; mirrors params and metrics onto the parent run."""

    def __init__(self, client, run_id: str, parent_id: str):
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    def log_params(self, params: dict[str, object], parent_too: bool = True) -> None:
        from mlflow.entities import Param

        entries = [Param(k, str(v)) for k, v in params.items()]
        for run_id in (self.run_id, self.parent_id) if parent_too else (self.run_id,):
            _retry(lambda: self.client.log_batch(run_id, params=entries))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(entries), 500):  # log_batch takes at most 1000 entries
            for run_id in (self.run_id, self.parent_id):
                _retry(lambda: self.client.log_batch(run_id, metrics=entries[start:start + 500]))

    def log_metric_tree(self, prefix: str, tree: dict) -> None:
        """Log every number of a nested metrics dict under dotted keys: prefix.a.b.c."""
        self.log_metrics(flatten_numbers(tree, prefix))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_model(self, model, input_example) -> None:
        """The trained network as an MLflow model (the DVC-tracked state_dict stays what the
        pipeline itself loads)."""
        import mlflow

        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", input_example=input_example)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)


@contextmanager
def stage_run(stage: str, params, sections: tuple[str, ...]) -> Iterator[StageRun]:
    """Open the child run of `stage` under this pipeline execution's parent run.

    The child gets the params of `sections` (the keys the stage declares in dvc.yaml);
    the parent gets all params, so parents compare column by column in the UI.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = _retry(lambda: _experiment_id(client, uri))
    tags = dvc_tags(stage)
    key = pipeline_key(params.model_dump_json(), tags)
    parent_id = _retry(lambda: _parent_run(client, experiment_id, key, tags, params.flat()))
    child = _retry(lambda: client.create_run(
        experiment_id, run_name=stage,
        tags={**tags, PIPELINE_TAG: key, "mlflow.parentRunId": parent_id}))
    run = StageRun(client, child.info.run_id, parent_id)
    run.log_params(params.flat(*sections), parent_too=False)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        _retry(lambda: client.set_terminated(child.info.run_id, status))
        _retry(lambda: client.set_terminated(parent_id, status))


def _parent_run(client, experiment_id: str, key: str, tags: dict[str, str],
                all_params: dict[str, object]) -> str:
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`shiftwatch.role` = 'pipeline'"), max_results=1)
    if found:
        return found[0].info.run_id
    run_tags = {k: v for k, v in tags.items() if k != "dvc.stage"}
    run = client.create_run(experiment_id, run_name=f"pipeline {tags['dvc.exp_name']}",
                            tags={**run_tags, PIPELINE_TAG: key, "shiftwatch.role": "pipeline"})
    StageRun(client, run.info.run_id, run.info.run_id).log_params(all_params, parent_too=False)
    return run.info.run_id
