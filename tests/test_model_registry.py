"""The model registry and lineage on a real MLflow SQLite store in a temp folder: versions
found by md5, the @champion gate, downloading a models:/ URI, datasets with md5 digests."""

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.core.lineage import file_md5, folder_md5
from shiftwatch.tracking import registry

NAME = "shiftwatch-resnet18"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("shiftwatch", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, experiment


def _model(tmp_path, seed: int):
    """A stand-in state_dict file: distinct bytes per seed."""
    path = tmp_path / f"model_{seed}" / "resnet18.pt"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    return path


def _register(client, experiment, path):
    run = client.create_run(experiment)
    return registry.register(client, run.info.run_id, NAME, path, file_md5(path), {"git.commit": "abc"})


def test_a_model_is_registered_once_per_md5_with_its_tags(store, tmp_path):
    _, client, experiment = store
    model = _model(tmp_path, 1)
    first, created = _register(client, experiment, model)
    again, created_again = _register(client, experiment, model)
    assert created and not created_again and int(again.version) == int(first.version) == 1
    assert first.tags == {"git.commit": "abc", registry.MD5_TAG: file_md5(model)}
    other, created = _register(client, experiment, _model(tmp_path, 2))
    assert created and int(other.version) == 2
    assert int(registry.find_version(client, NAME, file_md5(model)).version) == 1


def test_champion_moves_only_past_the_gate(store, tmp_path):
    _, client, experiment = store
    v1, _ = _register(client, experiment, _model(tmp_path, 1))
    v2, _ = _register(client, experiment, _model(tmp_path, 2))
    v3, _ = _register(client, experiment, _model(tmp_path, 3))
    assert registry.promote(client, NAME, v1, 0.900, 0.5)["promoted"]  # the first becomes champion
    assert registry.promote(client, NAME, v1, 0.900, 0.5)["reason"] == "already champion"
    refused = registry.promote(client, NAME, v2, 0.890, 0.5)  # 1 point worse, gate is 0.5
    assert not refused["promoted"] and refused["champion_before"] == 1
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert registry.promote(client, NAME, v3, 0.897, 0.5)["promoted"]  # 0.3 points worse: passes
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 3
    assert client.get_model_version(NAME, "2").tags[registry.ACCURACY_TAG] == "0.890000"


def test_an_experiment_scores_its_model_but_does_not_move_the_champion(store, tmp_path):
    _, client, experiment = store
    v1, _ = _register(client, experiment, _model(tmp_path, 1))
    v2, _ = _register(client, experiment, _model(tmp_path, 2))
    blocked = "scored in experiment bally-loot"
    assert registry.promote(client, NAME, v1, 0.90, 0.5, blocked=blocked)["promoted"] is False  # none yet
    assert registry.promote(client, NAME, v1, 0.90, 0.5)["promoted"]  # from the workspace
    decision = registry.promote(client, NAME, v2, 0.95, 0.5, blocked=blocked)  # better, but an experiment
    assert not decision["promoted"] and decision["reason"] == blocked
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert client.get_model_version(NAME, "2").tags[registry.ACCURACY_TAG] == "0.950000"  # still scored


def test_a_models_uri_downloads_the_champion_once(store, tmp_path, monkeypatch):
    uri, client, experiment = store
    model = _model(tmp_path, 1)
    version, _ = _register(client, experiment, model)
    registry.promote(client, NAME, version, 0.9, 0.5)
    cache = tmp_path / "cache"
    path, number = registry.fetch_model(f"models:/{NAME}@champion", uri, cache)
    assert number == 1 and file_md5(path) == file_md5(model)
    monkeypatch.setattr(registry, "_download", lambda *a: pytest.fail("downloaded a cached version again"))
    assert registry.fetch_model(f"models:/{NAME}/1", uri, cache) == (path, 1)
    assert not list(cache.rglob("*.partial-*"))


@pytest.mark.parametrize(
    "uri, words",
    [
        ("models:/shiftwatch-resnet18", "not a model URI"),
        ("models:/shiftwatch-resnet18@nobody", "not found"),
        ("models:/no-such-model/3", "not found"),
    ],
)
def test_bad_model_uris_give_one_line(store, tmp_path, uri, words):
    tracking, client, experiment = store
    _register(client, experiment, _model(tmp_path, 1))
    with pytest.raises(ShiftwatchError) as err:
        registry.fetch_model(uri, tracking, tmp_path / "cache")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_dataset_input_carries_the_md5(store, tmp_path):
    _, client, experiment = store
    data = tmp_path / "domain_a.npz"
    np.savez(data, images=np.zeros((3, 28, 28)))
    run = client.create_run(experiment)
    client.log_inputs(run.info.run_id, [registry.dataset_input(data, file_md5(data), "training")])
    (logged,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == file_md5(data) and logged.dataset.name == str(data)
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "training")]


def test_a_folder_digest_changes_with_any_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"two")
    before = folder_md5(tmp_path)
    (tmp_path / "b.png").write_bytes(b"three")
    changed = folder_md5(tmp_path)
    (tmp_path / "b.png").rename(tmp_path / "c.png")
    assert len({before, changed, folder_md5(tmp_path)}) == 3
