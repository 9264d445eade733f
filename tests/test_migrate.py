"""tools/migrate_store.py on real MLflow stores: a local SQLite history (a pipeline parent with
stage children, a metric history, an artifact, a dataset input, a registered model with a
@champion alias) copied to another store, twice, and nothing duplicated."""

import migrate_store  # tools/, on pytest's path (pytest.ini): a maintainer tool, not part of the package
import pytest

from shiftwatch.tracking import registry

pytestmark = pytest.mark.slow  # real MLflow stores and a migration twice: `make test-fast` leaves it out


def make_history(uri: str, folder, experiment: str = "shiftwatch", model: str = "shiftwatch-resnet18") -> dict:
    """A small history like the pipeline's; returns what the copy must reproduce."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    experiment = client.create_experiment(
        experiment,
        artifact_location=(folder / "art").as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    parent = client.create_run(
        experiment, run_name="baseline abc (workspace)", start_time=1_000, tags={"shiftwatch.role": "pipeline"}
    ).info.run_id
    child = client.create_run(
        experiment, run_name="train", start_time=2_000, tags={"mlflow.parentRunId": parent, "dvc.stage": "train"}
    ).info.run_id
    client.log_param(child, "train.lr", "0.0001")
    losses = (0.9, 0.5, 0.4)
    client.log_batch(child, metrics=[Metric("train.epoch_loss", v, 3_000 + s, s) for s, v in enumerate(losses)])
    weights = folder / "resnet18.pt"
    weights.write_bytes(b"weights" * 100)
    client.log_inputs(child, [registry.dataset_input("data/prepared/domain_a.npz", "0" * 32, "training")])
    version, _ = registry.register(client, child, model, weights, "f" * 32, {"git.commit": "abc"})
    registry.promote(client, model, version, 0.9, 0.5)
    client.set_terminated(child, "FINISHED", end_time=5_000)
    client.set_terminated(parent, "FINISHED", end_time=6_000)
    return {"parent": parent, "child": child}


def check_copy(uri: str, folder, experiment: str = "shiftwatch", model: str = "shiftwatch-resnet18") -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"baseline abc (workspace)", "train"}
    parent, child = runs["baseline abc (workspace)"], runs["train"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id  # remapped
    assert (child.info.start_time, child.info.end_time, child.info.status) == (2_000, 5_000, "FINISHED")
    assert parent.info.end_time == 6_000 and child.data.params == {"train.lr": "0.0001"}
    history = client.get_metric_history(child.info.run_id, "train.epoch_loss")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(0, 0.9, 3_000), (1, 0.5, 3_001), (2, 0.4, 3_002)]
    assert [d.dataset.digest for d in child.inputs.dataset_inputs] == ["0" * 32]
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.run_id == child.info.run_id and champion.tags[registry.MD5_TAG] == "f" * 32
    path, _ = registry.fetch_model(f"models:/{model}@champion", uri, folder / "cache")
    assert path.read_bytes() == b"weights" * 100  # the artifact came along


def test_a_local_history_moves_to_another_store_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    source, target = f"sqlite:///{tmp_path / 'local.db'}", f"sqlite:///{tmp_path / 'team.db'}"
    make_history(source, tmp_path)
    counts = migrate_store.migrate(source, target, log=lambda _: None)
    assert (counts["runs"], counts["versions"]) == (2, 1)
    check_copy(target, tmp_path)
    again = migrate_store.migrate(source, target, log=lambda _: None)  # nothing twice
    assert again == {"runs": 0, "runs_already_there": 2, "versions": 0, "versions_already_there": 1}
    check_copy(target, tmp_path)


def test_an_unreachable_target_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    source = f"sqlite:///{tmp_path / 'local.db'}"
    make_history(source, tmp_path)
    capsys.readouterr()
    assert migrate_store.main(["--from", source, "--to", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("migrate_store: error: ")
    assert migrate_store.main(["--from", f"sqlite:///{tmp_path / 'none.db'}", "--to", source]) == 2
    assert "no such store" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["--to"])
def test_the_target_is_required(missing, capsys):
    with pytest.raises(SystemExit) as exited:
        migrate_store.main([])
    assert exited.value.code == 2 and missing in capsys.readouterr().err
