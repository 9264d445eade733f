import pytest
from mlflow import MlflowClient

from shiftwatch.params import Params
from shiftwatch.tracking import EXPERIMENT, PIPELINE_TAG, flatten_numbers, repo_root, stage_run, tracking_uri


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


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_stage_runs_share_a_parent_with_all_params_and_metrics(store, monkeypatch):
    params = Params()
    (store / "artifact.json").write_text("{}")
    with stage_run("detect", params, sections=("seed", "detect")) as run:
        run.log_metric_tree("detect", {"b_shift": {"ks_pvalue": 0.01}})
        run.log_artifact(store / "artifact.json")
    with stage_run("evaluate", params, sections=("shift.label_class", "evaluate")) as run:
        run.log_metrics({"evaluate.accuracy.b_shift": 0.6})
    monkeypatch.setenv("DVC_EXP_NAME", "bright-exp")
    with stage_run("detect", params, sections=("seed", "detect")) as run:
        run.log_metrics({"detect.b_shift.ks_pvalue": 0.001})

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (store / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("shiftwatch.role") == "pipeline"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 3
    workspace = next(p for p in parents if p.data.tags["dvc.exp_name"] == "workspace")
    assert workspace.data.metrics == {"detect.b_shift.ks_pvalue": 0.01, "evaluate.accuracy.b_shift": 0.6}
    assert workspace.data.params["shift.brightness"] == "0.1"  # every param, for side-by-side
    assert len(workspace.data.params) == len(params.flat())
    evaluate = next(c for c in children if c.data.tags["dvc.stage"] == "evaluate")
    assert evaluate.data.tags["mlflow.parentRunId"] == workspace.info.run_id
    assert set(evaluate.data.params) == {"shift.label_class", "evaluate.batch_size"}
    assert {"dvc.exp_name", "dvc.baseline_rev", "git.commit", PIPELINE_TAG} <= set(evaluate.data.tags)
    detect = next(c for c in children if c.data.tags["dvc.stage"] == "detect"
                  and c.data.tags["dvc.exp_name"] == "workspace")
    assert [a.path for a in client.list_artifacts(detect.info.run_id)] == ["artifact.json"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_failing_stage_marks_its_run_failed(store):
    with pytest.raises(RuntimeError):
        with stage_run("train", Params(), sections=("train",)):
            raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              filter_string="tags.`dvc.stage` = 'train'")
    assert [r.info.status for r in runs] == ["FAILED"]
