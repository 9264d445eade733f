import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from shiftwatch import ShiftwatchError
from shiftwatch.params import Params
from shiftwatch.tracking import (
    EXPERIMENT,
    PIPELINE_TAG,
    changed_params,
    declared_params,
    flatten_numbers,
    git_commit,
    headline_metrics,
    parent_name,
    repo_root,
    stage_run,
    tracking_uri,
)


def test_repo_root_maps_a_queued_experiment_back_to_the_main_repo(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    clone = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (clone / "stages").mkdir(parents=True)
    (clone / "dvc.yaml").write_text("stages: {}\n")
    assert repo_root(clone / "stages") == tmp_path.resolve()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(clone))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_flatten_numbers_keeps_only_numbers():
    assert flatten_numbers({"b": {"x": 1, "ok": True, "name": "n"}, "y": 0.5}, "s") == {"s.b.x": 1, "s.y": 0.5}


PIPELINE = """stages:
  detect:
    cmd: python -m stages.detect
    params: [seed, detect]
    metrics:
      - metrics/detect.json: {cache: false}
  evaluate:
    cmd: python -m stages.evaluate
    params: [shift.label_class, {params.yaml: [evaluate.batch_size]}]
    metrics:
      - metrics/evaluate.json: {cache: false}
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "metrics").mkdir()
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload))


def test_declared_params_and_headline_metrics_come_from_dvc_yaml(store):
    assert declared_params("detect") == ("seed", "detect")
    assert declared_params("evaluate") == ("shift.label_class", "evaluate.batch_size")
    assert headline_metrics() == {}  # no stage has run yet
    _write(store / "metrics" / "detect.json", {"b_shift": {"drift": 1, "ks_statistic": 0.3}})
    _write(store / "metrics" / "other.json", {"not": 1})  # not a declared metric: ignored
    assert headline_metrics() == {"detect.b_shift.drift": 1, "detect.b_shift.ks_statistic": 0.3}


def test_parents_carry_every_headline_metric_whichever_stages_ran(store, monkeypatch):
    params = Params()
    (store / "artifact.json").write_text("{}")
    with stage_run("detect", params) as run:  # the baseline: both stages run
        _write(store / "metrics" / "detect.json", {"b_shift": {"ks_statistic": 0.3}})
        run.log_metric_tree("detect", {"b_shift": {"ks_statistic": 0.3, "ks_pvalue": 0.01}})
        run.log_artifact(store / "artifact.json")
    with stage_run("evaluate", params) as run:
        _write(store / "metrics" / "evaluate.json", {"accuracy": {"b_shift": 0.6}})
        run.log_metrics({"evaluate.accuracy.b_shift": 0.6})
    monkeypatch.setenv("DVC_EXP_NAME", "bright-exp")  # an experiment in which DVC skips evaluate
    with stage_run("detect", params) as run:
        _write(store / "metrics" / "detect.json", {"b_shift": {"ks_statistic": 0.4}})
        run.log_metrics({"detect.b_shift.ks_pvalue": 0.001})

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (store / "mlartifacts").resolve().as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags["dvc.exp_name"]: r for r in runs if r.data.tags.get("shiftwatch.role") == "pipeline"}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert set(parents) == {"workspace", "bright-exp"} and len(children) == 3
    # headline only, and the skipped stage's numbers too
    assert parents["workspace"].data.metrics == {"detect.b_shift.ks_statistic": 0.3,
                                                 "evaluate.accuracy.b_shift": 0.6}
    assert parents["bright-exp"].data.metrics == {"detect.b_shift.ks_statistic": 0.4,
                                                  "evaluate.accuracy.b_shift": 0.6}
    workspace = parents["workspace"]
    assert workspace.data.params["shift.brightness"] == "0.1"  # every param, for side-by-side
    assert len(workspace.data.params) == len(params.flat())
    evaluate = next(c for c in children if c.data.tags["dvc.stage"] == "evaluate")
    assert evaluate.data.tags["mlflow.parentRunId"] == workspace.info.run_id
    assert set(evaluate.data.params) == {"shift.label_class", "evaluate.batch_size"}
    assert {"dvc.exp_name", "dvc.baseline_rev", "git.commit", PIPELINE_TAG, "mlflow.user",
            "mlflow.source.name", "mlflow.source.git.commit"} <= set(evaluate.data.tags)
    assert evaluate.data.tags["mlflow.source.name"] == "dvc.yaml:evaluate"
    detect = next(c for c in children if c.data.tags["dvc.stage"] == "detect"
                  and c.data.tags["dvc.exp_name"] == "workspace")
    assert detect.data.metrics == {"detect.b_shift.ks_statistic": 0.3, "detect.b_shift.ks_pvalue": 0.01}
    assert [a.path for a in client.list_artifacts(detect.info.run_id)] == ["artifact.json"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_failing_stage_marks_its_run_and_parent_failed(store):
    with pytest.raises(RuntimeError):
        with stage_run("detect", Params()):
            time.sleep(0.05)
            raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted((r.data.tags.get("dvc.stage", "parent"), r.info.status) for r in runs) == [
        ("detect", "FAILED"), ("parent", "FAILED")]
    child = next(r for r in runs if r.data.tags.get("dvc.stage") == "detect")
    assert child.info.end_time - child.info.start_time >= 50  # open while the stage worked


def test_parent_names_say_which_params_differ_from_the_baseline(store, monkeypatch):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (store / "params.yaml").write_text("shift:\n  brightness: 0.1\n")
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "baseline"]):
        subprocess.run(["git", *command], cwd=store, check=True)
    commit = git_commit(store)
    current = Params.model_validate({"shift": {"brightness": 0.2}, "power": {"sizes": [10, 20]}}).flat()
    changed = changed_params(current, commit)
    assert changed == {"shift.brightness": 0.2, "power.sizes": [10, 20]}
    assert parent_name({"dvc.baseline_rev": commit, "dvc.exp_name": "bally-loot"}, changed) == (
        "shift.brightness=0.2, power.sizes=[10, 20] (bally-loot)")
    assert changed_params(Params().flat(), commit) == {}  # defaults = baseline (tuples vs lists too)
    assert parent_name({"dvc.baseline_rev": commit, "dvc.exp_name": "workspace"}, {}) == (
        f"baseline {commit[:7]} (workspace)")
    assert changed_params(current, "no-such-commit") == {}


def test_a_store_that_does_not_answer_stops_the_stage_before_its_work(store, monkeypatch):
    """A server that refuses connections fails the stage in one line, before the body runs
    (no outputs), instead of after the work and minutes of MLflow's retries."""
    import socket

    with socket.socket() as probe:  # a free port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    worked = []
    with pytest.raises(ShiftwatchError, match=rf"127\.0\.0\.1:{port} does not answer") as raised:
        with stage_run("detect", Params()):
            worked.append(True)
    assert not worked
    assert "\n" not in str(raised.value)
