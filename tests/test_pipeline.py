"""The pipeline for real: `dvc repro` and `dvc exp run` in a temp copy of the repo, on a small
configuration (2,000 training images, 500 test images, one epoch), read back through MLflow."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, needs_fashion_mnist
from mlflow import MlflowClient

from shiftwatch.core.io import load_set
from shiftwatch.tracking.dvc import headline_metrics, headline_plots
from shiftwatch.tracking.runs import stage_details

pytestmark = [needs_fashion_mnist, pytest.mark.slow]  # real dvc repro: `make test-fast` leaves it out

SMALL = {
    "data": {"max_train_images": 2000, "max_test_images": 500},
    "train": {"epochs": 1},
    "detect": {"classifier_samples": 300},
    "monitor": {"classifier_samples": 200, "mmd_permutations": 150},
    "power": {
        "repetitions": 10,
        "detection_repetitions": 9,
        "sizes": [10, 100],
        "mmd_permutations": 150,
        "mmd_repetitions": {100: 5},
        "diagnostic_repetitions": {100: 7},
        "corruptions": {"contrast": [0.3], "rotate": [30]},
        "corruption_sizes": [10, 100],
        "corruption_pool_images": 400,
        "corruption_repetitions": 8,
        "monitored_reference": 500,
        "monitored_sizes": [10, 100],
    },
    "harm": {
        "sizes": [100],
        "repetitions": 10,
        "null_repetitions": 12,
        "change_sizes": [100],
        "change_repetitions": 8,
        "change_first_look": 4,
        "reference_images": 300,
        # Four design cells pin down four weights at most: with clear_border as a fifth signal a
        # CI run fitted it 8.1 (the real grid's 40 cells: 0.19), and the estimate's standard error
        # on 300 of the reference's own images grew to 8.5 points, enough to page on them.
        "signals": ["confidence", "atc", "agreement", "soft_agreement"],
        "design": {"contrast": [0.5, 0.3], "rotate": [30], "label_keep": [0.1]},
        "held_out": {"pixelate": [7]},
        "everyday": {"jpeg": [90]},
    },
    "mitigate": {"adabn_images": 200},
}
MODEL_STAGES = ("prepare", "train", "reference", "finetune", "power", "harm")  # once per model
SHIFT_STAGES = ("shift", "detect", "evaluate", "monitor", "mitigate")  # once per shift experiment
STAGES = MODEL_STAGES + SHIFT_STAGES


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `python` = this venv
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
    )
    return env


def _run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(repo, sys.executable, "-m", "dvc", *args, check=check)


def _copy_repo(destination: Path) -> Path:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(("data/", "models/", "metrics/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _small_params(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def _runs(repo: Path):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("shiftwatch")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def reproduce_small(repo: Path) -> Path:
    """A temp copy of the repo on the small configuration, committed, reproduced by `dvc repro`
    (every stage logged to the copy's own MLflow store), and the results committed."""
    _copy_repo(repo)
    _small_params(repo)
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "small configuration")
    result = _dvc(repo, "repro")
    assert all(f"Running stage '{stage}'" in result.stdout for stage in STAGES)
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "baseline results")
    return repo


@pytest.fixture(scope="module")
def repo(reproduced):
    """The session's reproduced small repo itself: these tests change it (experiments, queue)."""
    return reproduced.live


def test_repro_writes_every_output_and_metric(repo):
    for path in (
        "data/prepared/domain_a.npz",
        "data/shifted/b_shift.npz",
        "models/resnet18.pt",
        "data/reference/test.npz",
        "data/reference/domain_b.npz",
        "data/features/b_covariate.npz",
        "models/resnet18_augmented.pt",
        "data/finetuned/domain_b.npz",
        "metrics/plots/samples.png",
        "metrics/plots/mean_pixel/b_shift.png",
        "metrics/plots/confusion/b_shift.png",
        "metrics/confusion/b_shift.csv",
        "metrics/train_history.csv",
        "metrics/plots/monitor_estimates.png",
        "metrics/power/label_keep_0.1.csv",
        "metrics/plots/power.png",
        "metrics/plots/harm.png",
        "metrics/plots/page.png",
        "models/accuracy_estimator.json",
        "metrics/harm_details.json",
    ):
        assert (repo / path).is_file(), path
    prepare = _metrics(repo, "prepare")
    assert prepare["n"] == {"domain_a": 1400, "domain_b": 600, "test": 500}
    assert prepare["overlap_a_b"] == 0
    detect = _metrics(repo, "detect_details")
    assert detect["b_shift"]["drift"] == 1 and detect["b_shift"]["domain_auc"] > 0.9
    assert detect["b_raw"]["kl_divergence"] < detect["b_shift"]["kl_divergence"]
    # the registry's model-free detectors reach detect, monitor and power (pixel_ks, a diagnostic)
    assert set(detect["b_shift"]["registered"]) == {"ks_mean_pixel", "image_stats", "frame_span", "pixel_ks"}
    assert detect["b_shift"]["registered"]["pixel_ks"]["pvalue"] < 1e-6
    evaluate = _metrics(repo, "evaluate_details")
    assert set(evaluate) == {"domain_a_train", "test", "b_raw", "b_covariate", "b_label", "b_shift"}
    assert set(evaluate["b_shift"]["class_7"]) == {"precision", "recall", "f1"}
    monitor = _metrics(repo, "monitor_details")
    assert monitor["b_shift"]["drift"] == 1 and monitor["b_shift"]["tests"]["image_stats"]["pvalue"] < 1e-6
    assert {"class_7_share_true", "class_7_share_bbse", "class_7_share_em"} <= set(monitor["b_label"]["label_shift"])
    assert monitor["b_shift"]["diagnostics"]["pixel_ks"]["pvalue"] < 1e-6
    assert {"true", "atc", "average_confidence"} == set(monitor["b_covariate"]["accuracy"])
    power = _metrics(repo, "power_details")
    assert set(power["false_alarms"]) == {"no_shift", "domain_a_train"}
    assert set(power["detection"]["label_keep_0.1"]["combined"]) == {"10", "100"}
    # mmd_embedding gets power.mmd_repetitions at n = 100, and so does the combined verdict
    assert power["false_alarms"]["no_shift"]["mmd_embedding"]["100"]["repetitions"] == 5
    assert power["false_alarms"]["no_shift"]["combined"]["100"]["repetitions"] == 5
    assert power["false_alarms"]["no_shift"]["bbsd_ks"]["100"]["repetitions"] == 10
    # shifted streams get power.detection_repetitions, the nulls power.repetitions
    assert power["detection"]["brightness_0.02"]["bbsd_ks"]["100"]["repetitions"] == 9
    assert power["as_monitored"]["detection"]["label_keep_0.1"]["bbsd_ks"]["100"]["repetitions"] == 9
    # a diagnostic gets power.diagnostic_repetitions from n = 100 on, capped by the stream's own
    assert power["false_alarms"]["no_shift"]["pixel_ks"]["10"]["repetitions"] == 10
    assert power["false_alarms"]["no_shift"]["pixel_ks"]["100"]["repetitions"] == 7
    assert power["detection"]["rotate_30"]["pixel_ks"]["10"]["repetitions"] == 8
    assert power["detection"]["rotate_30"]["pixel_ks"]["100"]["repetitions"] == 7
    assert "miscalibrated" in power["false_alarms"]["no_shift"]["bbsd_ks"]["10"]
    assert monitor["b_shift"]["mmd_images_tested"] == {  # all of them: below monitor.mmd_max_per_side
        "reference": 500,
        "deployment": _metrics(repo, "shift")["b_shift"]["n"],
    }
    assert power["detection"]["brightness_0.02"]["image_stats"]["100"]["rate"] == 1.0
    assert _metrics(repo, "power")["min_n_power_90"]["brightness_0.02"] in (10, 100)
    # Detection tied to harm: every shifted stream has the accuracy it costs; the corruption
    # streams draw from the corruption pool at their own sizes; the headline counts the target.
    assert set(power["accuracy_loss_points"]) == set(power["detection"])
    assert set(power["detection"]["rotate_30"]["combined"]) == {"10", "100"}
    assert power["detection"]["rotate_30"]["bbsd_ks"]["100"]["repetitions"] == 8  # corruption_repetitions
    assert power["pool"]["corruption_pool_images"] == 400
    assert power["accuracy_loss_points"]["contrast_0.3"] > 5  # a 1-epoch model loses more than that
    harm = _metrics(repo, "power")["harm"]
    assert harm["harmful_shifts"] == len(power["harm"]["harmful"]) >= 1
    assert harm["detected"] == harm["harmful_shifts"] - len(power["harm"]["missed"])
    assert "contrast_0.3" not in _metrics(repo, "power")["min_n_power_90"]
    # The verdict as monitor/check run it: a 500-image reference (monitored_reference) per draw.
    monitored = power["as_monitored"]
    assert monitored["reference_images"] == 500 and set(monitored["false_alarms"]) == {"no_shift"}
    assert set(monitored["detection"]) == {"label_keep_0.1", "label_keep_0.3"}  # power.label_keep_levels
    # and every harmful shift at harm_n only, as many draws as a corruption cell
    assert set(monitored["harm_detection"]) == set(power["harm"]["harmful"])
    assert set(monitored["harm_detection"]["contrast_0.3"]["combined"]) == {"100"}
    # (or half as many, where those settle the 0.9 target: two_look_alarm_rates)
    settled = monitored["harm_detection"]["contrast_0.3"]["combined"]["100"]
    assert settled["repetitions"] == 8 or (
        settled["repetitions"] == 4 and not settled["ci_low"] <= 0.9 <= settled["ci_high"]
    )
    assert monitored["false_alarms"]["no_shift"]["combined"]["100"]["repetitions"] == 10
    assert set(_metrics(repo, "power")["as_monitored"]["min_n_power_90"]) == {"label_keep_0.1", "label_keep_0.3"}
    assert set(power["harm"]["as_monitored"]["harmful"]) == set(power["harm"]["harmful"])  # downsample_7 too
    assert "downsample_7" in power["harm"]["harmful"]
    assert harm["as_monitored"]["harmful_shifts"] == harm["harmful_shifts"]
    mitigate = _metrics(repo, "mitigate_details")
    assert set(mitigate["b_shift"]) == {
        "none",
        "label_shift_bbse",
        "label_shift_em",
        "adabn",
        "finetune_augmented",
        "selective",
        "selective_augmented",
    }
    assert mitigate["b_label"]["none"]["accuracy"] == pytest.approx(evaluate["b_label"]["accuracy"])
    for name in ("b_label", "b_covariate", "b_shift"):  # the prior correction obeys the trust flag
        corrected = mitigate[name]["label_shift_bbse"]
        assert corrected["applied"] == 1 - monitor[name]["label_shift"]["untrustworthy"]
        if not corrected["applied"]:
            assert corrected["accuracy"] == mitigate[name]["none"]["accuracy"]
            assert set(corrected["if_applied"]) >= {"accuracy", "class_7_recall"}
    shift = _metrics(repo, "shift")
    assert shift["b_shift"]["n"] == shift["b_label"]["n"] < shift["b_raw"]["n"]
    assert shift["b_label"]["class_7_share"] < shift["b_raw"]["class_7_share"] / 5


def _parents(runs) -> list:
    return [r for r in runs if r.data.tags.get("shiftwatch.role") == "pipeline"]


def test_repro_fits_the_estimate_and_the_page_fires_on_harm_not_on_change(repo):
    """Stage harm on the 1-epoch model: the estimator, its judged cells, and monitor's two answers."""
    from shiftwatch.operations.page import load_estimator

    fit, summary, payload = load_estimator(repo / "models" / "accuracy_estimator.json")
    assert fit.signals == ("confidence", "atc", "agreement", "soft_agreement") and min(fit.weights) >= 0
    assert summary.size == 500 and payload["page_points"] == 3  # the test set's 500 images
    harm = _metrics(repo, "harm_details")
    assert set(harm["cells"]) == {
        "no_shift",
        "contrast_0.5",
        "contrast_0.3",
        "rotate_30",
        "label_keep_0.1",
        "pixelate_7",
        "jpeg_90",
    }
    assert {c["group"] for c in harm["cells"].values()} == {"null", "design", "held_out", "everyday"}
    assert harm["cells"]["contrast_0.5"]["left_out"] == "contrast"  # judged by a fit that never saw it
    assert harm["cells"]["pixelate_7"]["left_out"] is None
    for name, cell in harm["cells"].items():
        draws = cell["draws"]["100"]
        assert draws["repetitions"] == (12 if name == "no_shift" else 10)  # harm.null_repetitions on no shift
        assert 0 <= draws["page_rate"] <= 1 and 0 <= draws["coverage"] <= 1
        assert 0 <= draws["confirmed_pages"] <= round(draws["page_rate"] * draws["repetitions"])
        assert draws["change_repetitions"] in (4, 8) and 0 <= draws["change_rate"] <= 1  # the verdict, same draws
    # the change verdict (as check runs it) sees what a 30 % contrast does to the pixels
    assert harm["cells"]["contrast_0.3"]["draws"]["100"]["change_rate"] == 1.0
    # Where the estimate (population, the fit that never saw the family) puts the loss at >= 10
    # points, the page fires in most draws. (On a 4-cell design grid a left-out fit can be far off:
    # this weak model's contrast_0.3 loses 22 points and its fit without contrast sees none.)
    estimated = {name: c["loss_points"] - c["population_error_points"] for name, c in harm["cells"].items()}
    clearly_hurt = [name for name, loss in estimated.items() if loss >= 10]
    assert clearly_hurt, estimated
    assert all(harm["cells"][name]["draws"]["100"]["page_rate"] >= 0.7 for name in clearly_hurt), clearly_hurt
    # calibration on real draws: the interval holds the draw's own accuracy under no shift
    assert harm["cells"]["no_shift"]["draws"]["100"]["coverage"] >= 0.8
    headline = _metrics(repo, "harm")
    assert set(headline["page"]) == {"harmful_min", "harmless_max", "no_shift_max"}
    assert harm["summary"]["page_n"] == 100 and headline["page"] == {  # harm.sizes has no 200 here
        key: harm["summary"]["page_by_n"]["100"][key] for key in headline["page"]
    }
    assert 0 <= harm["summary"]["coverage_min"] <= headline["estimate"]["held_out"]["coverage_min"] <= 1
    assert headline["estimate"]["held_out"]["coverage_min"] == harm["cells"]["pixelate_7"]["draws"]["100"]["coverage"]
    # monitor gives both answers per set: b_shift costs this model far more than 5 points
    monitor = _metrics(repo, "monitor")
    assert monitor["b_shift"]["page"] == 1 and monitor["b_shift"]["estimated_loss_points"] >= 3
    assert monitor["b_shift"]["drift"] == 1
    details = _metrics(repo, "monitor_details")["b_shift"]["page"]
    assert details["true_loss_points"] > 10 and details["interval"][0] <= details["accuracy"]


def test_a_fresh_clone_pulls_the_model_and_checks_without_retraining(repo, tmp_path):
    """`make remote` + `dvc push` in one checkout; in a fresh clone `dvc pull` restores data,
    model and reference summary: nothing to rerun, and `check` gives its verdict at once."""
    storage = tmp_path / "dvc-storage"
    _run(repo, "make", "remote", f"REMOTE={storage}")
    _run(repo, "git", "add", ".dvc/config")
    _run(repo, "git", "commit", "-qm", "default DVC remote")
    _dvc(repo, "push")
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "resnet18.pt").exists()
    _dvc(clone, "pull")
    assert "up to date" in _dvc(clone, "status").stdout  # nothing to retrain or recompute
    np.save(tmp_path / "b_shift.npy", load_set(clone / "data" / "shifted" / "b_shift.npz").images[:300])
    np.save(tmp_path / "test.npy", load_set(clone / "data" / "prepared" / "test.npz").images[:300])
    check = lambda batch: (
        _run(clone, sys.executable, "-m", "shiftwatch", "check", str(batch), "--quiet", check=False).returncode
    )
    assert check(tmp_path / "b_shift.npy") == 1  # the 1-epoch model loses far more than 5 points: page
    assert check(tmp_path / "test.npy") == 0  # part of the reference itself: no page


@pytest.fixture()
def s3_endpoint():
    """A local S3-compatible server (moto, from PyPI) with one bucket; fake credentials."""
    import socket

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        for _ in range(100):
            try:
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    region_name="us-east-1",
                ).create_bucket(Bucket="team")
                break
            except Exception:  # not listening yet
                time.sleep(0.2)
        yield endpoint, credentials
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_s3_remote_round_trips_data_model_and_reference(repo, tmp_path, s3_endpoint, monkeypatch):
    """The S3 set-up docs/experiments.md documents, against a local S3 server: remote settings in the
    git-ignored .dvc/config.local, credentials only from the environment."""
    endpoint, credentials = s3_endpoint
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)  # _env passes them on to dvc

    def s3_remote(checkout: Path) -> None:
        _dvc(checkout, "remote", "add", "--local", "s3team", "s3://team/shiftwatch")
        _dvc(checkout, "remote", "modify", "--local", "s3team", "endpointurl", endpoint)

    s3_remote(repo)
    _dvc(repo, "push", "-r", "s3team")
    assert "AWS" not in (repo / ".dvc" / "config").read_text()  # nothing secret committed
    clone = tmp_path / "s3clone"
    _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    s3_remote(clone)
    _dvc(clone, "pull", "-r", "s3team")
    for path in ("models/resnet18.pt", "data/reference/test.npz", "data/prepared/domain_a.npz"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert "up to date" in _dvc(clone, "status").stdout


def test_repro_logs_one_run_per_stage_under_one_parent(repo):
    client, runs = _runs(repo)
    parents = _parents(runs)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags["dvc.stage"] for r in children) == sorted(STAGES)
    for run in (*children, *parents):  # opened when the work started, closed when it ended
        assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git.commit"]
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"].startswith("dvc.yaml")
    train_run = next(r for r in children if r.data.tags["dvc.stage"] == "train")
    assert train_run.info.end_time - train_run.info.start_time > 1000  # it trained: > 1 s

    # The parent holds the headline numbers (what `dvc exp show` shows) and nothing else.
    parent = parents[0]
    assert set(parent.data.metrics) == set(headline_metrics(repo))
    for key in (
        "detect.b_shift.ks_statistic",
        "detect.b_shift.kl_divergence",
        "detect.b_shift.domain_auc",
        "evaluate.accuracy.test",
        "evaluate.accuracy.b_shift",
        "evaluate.class_7_b_shift.recall",
        "train.final_loss",
        "monitor.b_shift.drift",
        "power.false_alarm_max.combined",
    ):
        assert key in parent.data.metrics, key
    assert "detect.b_raw.ks_pvalue" not in parent.data.metrics  # details stay on the stage run ...
    detect = next(r for r in children if r.data.tags["dvc.stage"] == "detect")
    assert "detect.b_raw.ks_pvalue" in stage_details(client, detect.info.run_id)  # ... as an artifact
    assert set(detect.data.metrics) == set(headline_metrics(repo, stage="detect"))  # one name per number
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {  # the plots, power's too
        p.name for p in headline_plots(repo)
    }
    assert parent.info.run_name.startswith("baseline ")
    assert parent.data.params["shift.brightness"] == "0.1"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs
    assert "model" in {a.path for a in client.list_artifacts(train_run.info.run_id)} | {
        m.name for m in client.search_logged_models([train_run.info.experiment_id])
    }


def test_the_model_is_registered_with_its_lineage_and_checked_from_the_registry(repo, tmp_path):
    from shiftwatch.core.lineage import file_md5

    client, runs = _runs(repo)
    name = yaml.safe_load((repo / "params.yaml").read_text())["registry"]["model_name"]
    (version,) = client.search_model_versions(f"name = '{name}'")
    train_run = next(r for r in runs if r.data.tags.get("dvc.stage") == "train")
    assert version.run_id == train_run.info.run_id
    assert version.tags["model_md5"] == file_md5(repo / "models" / "resnet18.pt")
    assert version.tags["git.commit"] == train_run.data.tags["git.commit"]
    assert version.tags["dvc.exp_name"] == "workspace"
    # evaluate scored it on the held-out test set and, the first, made it champion
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert float(version.tags["test_accuracy"]) == pytest.approx(_metrics(repo, "evaluate")["accuracy"]["test"])
    # the runs link back to the exact data: DVC's md5 of each file they read
    (trained_on,) = train_run.inputs.dataset_inputs
    assert trained_on.dataset.digest == file_md5(repo / "data" / "prepared" / "domain_a.npz")
    evaluate_run = next(r for r in runs if r.data.tags.get("dvc.stage") == "evaluate")
    evaluated = {d.dataset.name: d.dataset.digest for d in evaluate_run.inputs.dataset_inputs}
    assert evaluated["data/shifted/b_shift.npz"] == file_md5(repo / "data" / "shifted" / "b_shift.npz")

    # `check --model models:/<name>@champion` downloads the champion and uses it
    np.save(tmp_path / "b_shift.npy", load_set(repo / "data" / "shifted" / "b_shift.npz").images[:300])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftwatch",
            "check",
            str(tmp_path / "b_shift.npy"),
            "--model",
            f"models:/{name}@champion",
            "--json",
            "-",
        ],
        cwd=repo,
        env={**_env(repo), "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == f"models:/{name}@champion"
    assert report["model_md5"] == version.tags["model_md5"]


def test_dvc_exp_show_fits_a_screen(repo):
    header = _dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    metric_columns = [c for c in header if c in set(_flat_metric_names(repo))]
    assert 20 <= len(metric_columns) <= 60, (len(metric_columns), metric_columns)
    # --only-changed keeps what differs between experiments: nothing yet but the baseline row
    changed = _dvc(repo, "exp", "show", "--csv", "--only-changed").stdout.splitlines()[0].split(",")
    assert len(changed) < len(header) / 4, changed


def _flat_metric_names(repo: Path) -> list[str]:
    return [key.split(".", 1)[1] for key in headline_metrics(repo)]


def test_experiment_reruns_only_what_the_shift_touches(repo):
    model_before = (repo / "models" / "resnet18.pt").read_bytes()
    detect_before = _metrics(repo, "detect_details")
    result = _dvc(repo, "exp", "run", "-S", "shift.brightness=0.2")
    for stage in MODEL_STAGES:  # train, reference, finetune and power are cached per model
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout, stage
    assert all(f"Running stage '{stage}'" in result.stdout for stage in SHIFT_STAGES)
    assert (repo / "models" / "resnet18.pt").read_bytes() == model_before
    detect_after = _metrics(repo, "detect_details")
    assert detect_after["b_raw"] == detect_before["b_raw"]  # untouched by brightness
    assert detect_after["b_shift"]["ks_statistic"] > detect_before["b_shift"]["ks_statistic"]

    _, runs = _runs(repo)
    assert sum(r.data.tags.get("dvc.stage") == "train" for r in runs) == 1
    (baseline,) = [r for r in _parents(runs) if r.data.tags["dvc.exp_name"] == "workspace"]
    (experiment,) = [r for r in _parents(runs) if r.data.tags["dvc.exp_name"] != "workspace"]
    assert experiment.data.params["shift.brightness"] == "0.2"
    assert experiment.info.run_name.startswith("shift.brightness=0.2 (")
    # No holes: the experiment's parent carries the numbers of the stages DVC skipped (train,
    # power, ...), the same keys as the baseline's; the shift-dependent ones moved.
    assert set(experiment.data.metrics) == set(baseline.data.metrics)
    assert experiment.data.metrics["train.final_loss"] == baseline.data.metrics["train.final_loss"]
    assert experiment.data.metrics["detect.b_shift.ks_statistic"] > baseline.data.metrics["detect.b_shift.ks_statistic"]


def test_sweep_report_reads_the_runs_back_from_mlflow(repo):
    # Runs after the brightness=0.2 experiment above: two values of shift.brightness in MLflow.
    result = _run(repo, sys.executable, "-m", "shiftwatch.commands.sweep", "shift.brightness")
    table = [line for line in result.stdout.splitlines() if line.startswith(("0.1 |", "0.2 |"))]
    assert [line.split(" | ")[0] for line in table] == ["0.1", "0.2"]
    assert (repo / "metrics" / "plots" / "sweep_shift.brightness.png").is_file()
    missing = _run(repo, sys.executable, "-m", "shiftwatch.commands.sweep", "shift.nothing", check=False)
    assert missing.returncode == 2 and "no pipeline run" in missing.stderr


def test_bad_parameter_stops_the_stage_with_one_line_and_no_outputs(repo):
    broken = _copy_repo(repo.parent / "broken")
    (broken / "data" / "prepared").mkdir(parents=True)
    for name in ("domain_a.npz", "domain_b.npz"):
        shutil.copy2(repo / "data" / "prepared" / name, broken / "data" / "prepared" / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shift"]["brightness"] = 5
    (broken / "params.yaml").write_text(yaml.safe_dump(params))
    result = _run(broken, sys.executable, "-m", "stages.shift", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "shiftwatch shift: error: params.yaml: shift.brightness = 5 is not "
        "allowed: input should be less than or equal to 1"
    )
    assert not (broken / "data" / "shifted").exists() and not (broken / "metrics").exists()

    shutil.copy2(repo / "params.yaml", broken / "params.yaml")  # valid params, but no model
    result = _run(broken, sys.executable, "-m", "stages.evaluate", check=False)
    assert result.returncode == 2 and "not found" in result.stderr and len(result.stderr.splitlines()) == 1
    _, runs = _runs(broken)  # the crash is on record: a FAILED stage run and parent
    assert [
        (r.data.tags.get("dvc.stage", "pipeline"), r.info.status)
        for r in runs
        if r.data.tags.get("dvc.stage") == "evaluate"
    ] == [("evaluate", "FAILED")]
    assert _parents(runs)[0].info.status == "FAILED"


def test_queued_experiment_lands_in_the_main_mlflow_store(repo):
    # A param only `mitigate` reads: one stage reruns in the queue's temp clone (the team-server
    # test queues shift experiments, all five shift stages each).
    _dvc(repo, "exp", "run", "--queue", "-S", "mitigate.review_threshold=0.7", "--name", "queued-review")
    _dvc(repo, "queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _dvc(repo, "queue", "status").stdout
        if "queued-review" in status and not re.search(r"queued-review\s+\S+( \S+)?\s+(Queued|Running)", status):
            break
        time.sleep(5)
    assert re.search(r"queued-review.*Success", status), status

    _, runs = _runs(repo)
    queued = [r for r in runs if r.data.tags.get("dvc.exp_name") == "queued-review"]
    assert sorted(r.data.tags.get("dvc.stage", "pipeline") for r in queued) == ["mitigate", "pipeline"]
    parent = next(r for r in queued if r.data.tags.get("shiftwatch.role") == "pipeline")
    assert parent.data.params["mitigate.review_threshold"] == "0.7"
    assert "mitigate.review_threshold=0.7" in parent.info.run_name
    assert parent.info.run_name.endswith(" (queued-review)")
    assert set(parent.data.metrics) == set(headline_metrics(repo))
    assert parent.info.artifact_uri.startswith((repo / "mlartifacts").resolve().as_uri())
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing in a temp clone


def test_a_bad_params_yaml_fails_before_dvc_removes_any_output(repo):
    """DVC removes a stage's outputs before running it; the `validate` gate fails first, so a
    NaN alpha no longer costs power's uncached outputs (46 files, ~7 minutes at full size)."""
    good = (repo / "params.yaml").read_text()
    outputs = sorted(
        p
        for folder in ("metrics", "data/shifted")
        for p in (repo / folder).rglob("*")
        if p.is_file() and p.name != "params_checked.json"
    )
    before = {p: p.read_bytes() for p in outputs}
    params = yaml.safe_load(good)
    params["monitor"]["alpha"] = float("nan")
    del params["detect"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = _dvc(repo, "repro", check=False)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("shiftwatch")]
        assert errors == [
            "shiftwatch validate: error: params.yaml: detect.bins is not set (nor 5 other keys); "
            "add it to params.yaml (every key is required: `git show HEAD:params.yaml` has them all)"
        ]
        assert re.findall(r"Running stage '(\w+)'", result.stdout) == ["validate"]
        assert {p: p.read_bytes() for p in outputs if p.exists()} == before  # nothing removed or changed
    finally:
        (repo / "params.yaml").write_text(good)
        _dvc(repo, "repro", "validate")
    assert "up to date" in _dvc(repo, "status").stdout


def test_a_full_disk_mid_stage_is_one_line_and_keeps_the_previous_outputs(repo):
    """A write past the file-size limit (as a full disk: EFBIG instead of ENOSPC) half-way
    through the shift stage: one line naming the file, exit 2, data/shifted as it was."""
    import resource

    full = _copy_repo(repo.parent / "full_disk")
    for folder in ("data/prepared", "data/shifted"):
        shutil.copytree(repo / folder, full / folder)
    shutil.copy2(repo / "params.yaml", full / "params.yaml")
    shifted = {p.name: p.read_bytes() for p in (full / "data" / "shifted").iterdir()}
    limit = len(shifted["b_covariate.npz"]) - 1  # b_raw and b_label fit (uint8), b_covariate does not

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "stages.shift"],
        cwd=full,
        env=_env(full),
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "shiftwatch shift: error: cannot write data/shifted/b_covariate.npz: larger than the file-size limit "
        "(ulimit -f); raise it and rerun (nothing half-written is left)"
    ]
    assert {p.name: p.read_bytes() for p in (full / "data" / "shifted").iterdir()} == shifted
    assert sorted(p.name for p in (full / "data").iterdir()) == ["prepared", "shifted"]  # no staging left
    _, runs = _runs(full)
    assert [r.info.status for r in runs if r.data.tags.get("dvc.stage") == "shift"] == ["FAILED"]
