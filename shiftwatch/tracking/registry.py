"""The MLflow model registry and data lineage: every trained model is one version of the
registered model `registry.model_name` (default shiftwatch-resnet18), found again by the md5 of
its state_dict; the `@champion` alias names the version that monitoring should use.

A version's files are the DVC-tracked state_dict itself (`state_dict/resnet18.pt` under the
run that registered it), so `shiftwatch check --model models:/shiftwatch-resnet18@champion`
loads exactly the bytes `train` wrote, and the md5 recorded in a reference summary can be
compared with them. Each version carries tags: its md5, the git commit and DVC experiment
that produced it, and (once `evaluate` has scored it) its held-out test accuracy.

These functions take an MlflowClient; the stages call them through `shiftwatch.tracking.runs`
(in its helper process), `shiftwatch check` directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from shiftwatch import ShiftwatchError

CHAMPION = "champion"
MD5_TAG = "model_md5"
ACCURACY_TAG = "test_accuracy"
STATE_DICT_FOLDER = "state_dict"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def find_version(client, name: str, md5: str):
    """The oldest version of `name` whose state_dict has this md5, or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.{MD5_TAG} = '{md5}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register(client, run_id: str, name: str, model_path: str | Path, md5: str, tags: dict[str, str]):
    """The version of `name` holding the model at `model_path`: the existing one with the same
    md5 (a model retrained bit-identically, or one already registered by `train` when
    `evaluate` asks), else a new version from this run, with `tags`. Returns (version, created)."""
    from mlflow.exceptions import MlflowException

    existing = find_version(client, name, md5)
    if existing is not None:
        return existing, False
    client.log_artifact(run_id, str(model_path), STATE_DICT_FOLDER)
    try:
        client.create_registered_model(
            name,
            description="ResNet-18 on FashionMNIST domain A (shiftwatch); the @champion alias is what monitoring uses",
        )
    except MlflowException as err:  # registered before, or by a concurrent stage
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{STATE_DICT_FOLDER}", run_id=run_id, tags={**tags, MD5_TAG: md5}
    )
    return version, True


def promote(
    client, name: str, version, test_accuracy: float, tolerance_points: float, blocked: str | None = None
) -> dict:
    """Record `version`'s held-out test accuracy and move `@champion` to it if it passes the
    gate: accuracy >= the current champion's - tolerance_points (percentage points). The
    first scored version becomes champion. `blocked` (a reason) records the accuracy but
    moves nothing (an exploratory DVC experiment). Returns what was decided, for the log."""
    client.set_model_version_tag(name, version.version, ACCURACY_TAG, f"{test_accuracy:.6f}")
    champion = _version_by_alias(client, name, CHAMPION)
    decision: dict[str, object] = {
        "version": int(version.version),
        "test_accuracy": test_accuracy,
        "champion_before": None if champion is None else int(champion.version),
    }
    if blocked and (champion is None or champion.version != version.version):
        decision.update(promoted=False, reason=blocked)
    elif champion is None:
        decision.update(promoted=True, reason="no champion yet")
    elif champion.version == version.version:
        decision.update(promoted=False, reason="already champion")
    else:
        best = float(champion.tags.get(ACCURACY_TAG, "nan"))
        gate = best - tolerance_points / 100
        decision["champion_test_accuracy"] = best
        if not test_accuracy >= gate:  # also when the champion has no accuracy (nan): keep it
            decision.update(
                promoted=False,
                reason=f"test accuracy {test_accuracy:.4f} < champion's {best:.4f} - {tolerance_points:g} points",
            )
            return decision
        decision.update(
            promoted=True,
            reason=f"test accuracy {test_accuracy:.4f} >= champion's {best:.4f} - {tolerance_points:g} points",
        )
    if decision["promoted"]:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return decision


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias (or model) yet
        return None


def dataset_input(path: str | Path, md5: str, context: str):
    """An MLflow dataset input for a file or folder: named by its path, its md5 as digest (the
    same digest DVC records for a file), tagged with the context (training, evaluation, check)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=str(path), digest=md5, source_type="local", source=json.dumps({"uri": str(path)}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def fetch_model(uri: str, tracking_uri: str, cache: Path | None = None) -> tuple[Path, int]:
    """Download the state_dict of `models:/<name>@<alias>` or `models:/<name>/<version>` from
    the tracking store (once per version: versions never change) and return (its local path,
    the version number). Errors are one line: a malformed URI, an unknown model or alias, a
    store that does not answer."""
    match = _MODEL_URI.match(uri)
    if match is None:
        raise ShiftwatchError(
            f"--model {uri}: not a model URI; use models:/<name>@<alias> "
            "(e.g. models:/shiftwatch-resnet18@champion) or models:/<name>/<version>"
        )
    from mlflow.exceptions import MlflowException

    from shiftwatch.tracking.store import store_client

    client, name = store_client(tracking_uri), match["name"]
    try:
        version = (
            client.get_model_version_by_alias(name, match["alias"])
            if match["alias"]
            else client.get_model_version(name, match["version"])
        )
    except MlflowException as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ShiftwatchError(
            f"--model {uri}: not found in the MLflow store at {tracking_uri} ({first}); "
            "run the pipeline against that store or check MLFLOW_TRACKING_URI"
        ) from None
    folder = (cache or _cache_root()) / name / str(version.version)
    weights = folder / "resnet18.pt"
    if not weights.exists():
        _download(version, folder, uri, tracking_uri)
    return weights, int(version.version)


def _download(version, folder: Path, uri: str, tracking_uri: str) -> None:
    """The version's state_dict into `folder`/resnet18.pt, atomically (a half-finished
    download is never used)."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # stderr is for one-line errors
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=version.source, dst_path=str(partial), tracking_uri=tracking_uri
            )
        )
        weights = local / "resnet18.pt" if local.is_dir() else local
        if weights.name != "resnet18.pt" or not weights.exists():
            raise ShiftwatchError(
                f"--model {uri}: version {version.version} holds no resnet18.pt "
                f"(source {version.source}); register it with `dvc repro train`"
            )
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(weights, folder / "resnet18.pt")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shiftwatch" / "models"
