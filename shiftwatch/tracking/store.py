"""The MLflow tracking store: where it is, one client that fails within seconds when a server
is gone, the project's two experiments, and the tags that lead from a run to its DVC experiment.

Two experiments: EXPERIMENT holds the pipeline's runs (one parent per pipeline execution, a
child per stage), CHECKS_EXPERIMENT the runs of `shiftwatch check --log`, one per checked
batch, so neither adds columns to the other's runs table.

Where the store is: MLFLOW_TRACKING_URI if set, else sqlite:///<repo root>/mlflow.db with
artifacts in <repo root>/mlartifacts. The repo root comes from DVC_ROOT or by walking up from
the working directory to dvc.yaml, and a queued experiment's temporary clone
(<root>/.dvc/tmp/exps/...) is mapped back to <root>, so queued runs land in the main store.
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from pathlib import Path

from shiftwatch import ShiftwatchError

EXPERIMENT = "shiftwatch"
CHECKS_EXPERIMENT = "shiftwatch-checks"
# Seconds the first call to the tracking store may take before the stage gives up on it.
STORE_TIMEOUT_S = 5
# Without this tag MLflow 3's UI opens an experiment on its GenAI traces page.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def repo_root(start: Path | None = None) -> Path:
    """The project root: DVC_ROOT, else the nearest folder above `start` holding dvc.yaml,
    with a queued experiment's temporary clone mapped back to the repository it came from."""
    if start is None:
        start = Path(os.environ.get("DVC_ROOT") or Path.cwd())
    start = start.resolve()
    root = next((p for p in (start, *start.parents) if (p / "dvc.yaml").exists()), start)
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store; a server or other store decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _retry(call, attempts: int = 8):
    """SQLite allows one writer: parallel queue workers can see 'database is locked'."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # MlflowException wraps the OperationalError
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _experiment_id(client, uri: str, name: str = EXPERIMENT) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri), tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by a concurrent stage
            found = client.get_experiment_by_name(name)
    if found.tags.get("mlflow.experimentKind") is None:  # a store from before the tag
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def git_commit(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD") or "unknown"


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dvc_tags(stage: str) -> dict[str, str]:
    """Tags that lead from an MLflow run to its DVC experiment and commit, and back, plus
    MLflow's own source tags (the UI's Source, Version and User columns)."""
    here = Path.cwd()
    commit = git_commit(here)
    return {
        "dvc.stage": stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", commit),
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "mlflow.source.name": f"dvc.yaml:{stage}" if stage else "dvc.yaml",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"


def flatten_numbers(tree: dict, prefix: str) -> dict[str, float]:
    """{'b_shift': {'ks_pvalue': 0.01}} -> {'<prefix>.b_shift.ks_pvalue': 0.01}; non-numbers dropped."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{prefix}.{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}.{key}"] = value
    return flat


def numbers_only(tree: dict) -> dict:
    """The nested dict with only its numbers (what flatten_numbers keeps), as plain floats and
    ints, for JSON; branches left empty are dropped."""
    kept: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            if branch := numbers_only(value):
                kept[key] = branch
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = float(value) if isinstance(value, float) else int(value)
    return kept


def one_line(err: BaseException, limit: int = 200) -> str:
    """ "Type: first line of the message" (the type alone if there is none), at most `limit` long."""
    text = str(err).strip()
    line = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _open_store() -> tuple:
    """(MlflowClient, experiment id) of the tracking store, checked once: a server that does
    not answer fails here within ~STORE_TIMEOUT_S seconds, not after MLflow's minutes of retries."""
    import mlflow

    # A new SQLite store announces its schema set-up at INFO on stderr; a stage's stderr is
    # for its own one-line errors.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = store_client(uri)
    return client, _retry(lambda: _experiment_id(client, uri))


# MLflow retries an HTTP call 7 times with exponential back-off, ~4 minutes before it gives up.
# An unattended monitor must hear within seconds that its server is gone; a user who wants
# more patience sets these variables.
FAIL_FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(STORE_TIMEOUT_S),
}


def store_client(uri: str | None = None):
    """An MlflowClient of the tracking store at `uri` (default: tracking_uri()). A server that
    does not answer is one ShiftwatchError within ~STORE_TIMEOUT_S seconds, here and on every
    later call (MLflow's HTTP retries cut to FAIL_FAST_HTTP unless set in the environment)."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    require_store(uri)
    return MlflowClient(uri)


def require_store(uri: str | None = None) -> None:
    """Fail fast (StoreUnreachable) if the tracking server at `uri` does not answer; creates
    nothing (a SQLite store is made only when a client first writes to it)."""
    uri = uri or tracking_uri()
    for key, value in FAIL_FAST_HTTP.items():
        os.environ.setdefault(key, value)
    problem = server_problem(uri)
    if problem:
        raise StoreUnreachable(uri, problem)


def server_problem(uri: str, timeout: float = STORE_TIMEOUT_S) -> str | None:
    """Why the tracking server at `uri` does not answer, or None (any HTTP answer counts;
    a database URI has no server to ask)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.ConnectionError as err:
        refused = "refused" in str(err) or "Failed to establish" in str(err)
        return "connection refused: nothing listens there" if refused else one_line(err)
    except requests.RequestException as err:
        return one_line(err)
    return None


def unreachable(uri: str, problem: str) -> str:
    return (
        f"the MLflow tracking store at {uri} does not answer ({problem}); "
        "start it, or unset MLFLOW_TRACKING_URI to log to the local mlflow.db"
    )


class StoreUnreachable(ShiftwatchError):
    """The tracking server did not answer; `problem` says how."""

    def __init__(self, uri: str, problem: str):
        super().__init__(unreachable(uri, problem))
        self.problem = problem
