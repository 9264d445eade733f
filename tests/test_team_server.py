"""A team's setup, for real: a throw-away PostgreSQL cluster, `mlflow server` on it with proxied
artifacts, a small `dvc repro`, then four queued experiments run two at a time
(`dvc queue start -j 2`). Every stage run of every experiment must land, none left RUNNING,
and artifacts must come back through the server."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, needs_fashion_mnist
from test_migrate import check_copy, make_history
from test_pipeline import SHIFT_STAGES, STAGES, _copy_repo, _env, _small_params

sys.path.insert(0, str(REPO / "tools"))
import migrate_store  # noqa: E402 (maintainer tools, not part of the package)
import team_server  # noqa: E402

from shiftwatch.io import load_set  # noqa: E402
from shiftwatch.lineage import file_md5  # noqa: E402

pytestmark = [needs_fashion_mnist, pytest.mark.skipif(
    not (team_server.PG_BIN / "initdb").exists(), reason="PostgreSQL 15 not installed: apt-get install postgresql")]
BRIGHTNESS = ("0.0", "0.05", "0.15", "0.2")


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("psycopg2")
    # Not under pytest's tmp folder (mode 0700): as root, the cluster runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="shiftwatch-team-"))
    os.chmod(folder, 0o755)
    mlflow = None
    try:
        backend = team_server.start_postgres(folder / "pg", team_server.free_port())
        port = team_server.free_port()
        mlflow = team_server.start_mlflow(backend, folder / "artifacts", port, folder / "mlflow.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        if mlflow is not None:
            mlflow.terminate()
            mlflow.wait(timeout=60)
        team_server.stop_postgres(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)


def _run(repo: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=repo, env={**_env(repo), "MLFLOW_TRACKING_URI": uri},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def _dvc(repo: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    return _run(repo, uri, sys.executable, "-m", "dvc", *args)


def test_four_experiments_two_at_a_time_lose_nothing_on_the_server(server, tmp_path):
    from mlflow import MlflowClient

    from shiftwatch.tracking import EXPERIMENT

    repo = _copy_repo(tmp_path)
    _small_params(repo)
    _run(repo, server, "git", "init", "-q", "-b", "main")
    _run(repo, server, "git", "add", "-A")
    _run(repo, server, "git", "commit", "-qm", "small configuration")
    _dvc(repo, server, "repro")
    _run(repo, server, "git", "add", "-A")
    _run(repo, server, "git", "commit", "-qm", "baseline results")
    for value in BRIGHTNESS:
        _dvc(repo, server, "exp", "run", "--queue", "-S", f"shift.brightness={value}", "--name", f"b{value}")
    started = time.monotonic()
    _dvc(repo, server, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _dvc(repo, server, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    print(f"queue of {len(BRIGHTNESS)} with -j 2: {time.monotonic() - started:.0f} s")
    assert status.count("Success") == len(BRIGHTNESS), status

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    assert not [r for r in runs if r.info.status != "FINISHED"]  # none RUNNING or FAILED
    baseline = [r for r in runs if r.data.tags.get("dvc.stage") in STAGES
                and r.data.tags.get("dvc.exp_name") == "workspace"]
    assert sorted(r.data.tags["dvc.stage"] for r in baseline) == sorted(STAGES)
    for value in BRIGHTNESS:
        landed = [r for r in runs if r.data.tags.get("dvc.exp_name") == f"b{value}"]
        assert sorted(r.data.tags.get("dvc.stage", "pipeline") for r in landed) == sorted(
            ("pipeline", *SHIFT_STAGES)), value
        parent = next(r for r in landed if r.data.tags.get("shiftwatch.role") == "pipeline")
        assert parent.data.params["shift.brightness"] == value

    train = next(r for r in baseline if r.data.tags["dvc.stage"] == "train")
    history = client.download_artifacts(train.info.run_id, "train_history.csv", str(tmp_path))
    assert Path(history).read_text().startswith("epoch,")
    evaluate = next(r for r in runs if r.data.tags.get("dvc.stage") == "evaluate" and r.data.tags.get("dvc.exp_name"))
    plots = [a.path for a in client.list_artifacts(evaluate.info.run_id, "plots")]
    assert plots, "evaluate's figures did not come back through the server"

    # The registry on the server: one version (every experiment reused the model), the champion,
    # and `check` loading it through the server by its models:/ URI.
    version, = client.search_model_versions("name = 'shiftwatch-resnet18'")
    assert client.get_model_version_by_alias("shiftwatch-resnet18", "champion").version == version.version
    np.save(tmp_path / "b_shift.npy", load_set(repo / "data" / "shifted" / "b_shift.npz").images[:300])
    result = subprocess.run([sys.executable, "-m", "shiftwatch", "check", str(tmp_path / "b_shift.npy"),
                             "--model", "models:/shiftwatch-resnet18@champion", "--quiet"], cwd=repo,
                            env={**_env(repo), "MLFLOW_TRACKING_URI": server, "XDG_CACHE_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # b_shift drifts
    assert file_md5(next(tmp_path.glob("shiftwatch/models/shiftwatch-resnet18/*/resnet18.pt"))) == \
        file_md5(repo / "models" / "resnet18.pt")


def test_a_local_history_moves_to_the_server(server, tmp_path):
    """tools/migrate_store.py from a local SQLite store to the PostgreSQL-backed server."""
    source = f"sqlite:///{tmp_path / 'local.db'}"
    make_history(source, tmp_path, experiment="someone's laptop", model="laptop-model")
    counts = migrate_store.migrate(source, server, log=lambda _: None)
    assert (counts["runs"], counts["versions"]) == (2, 1)
    check_copy(server, tmp_path, experiment="someone's laptop", model="laptop-model")
