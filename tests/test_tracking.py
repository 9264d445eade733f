import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from mlflow import MlflowClient

from shiftwatch import ShiftwatchError
from shiftwatch.core.params import load_params, parse_params
from shiftwatch.tracking.dvc import (
    COMPARE_FIRST,
    changed_params,
    declared_params,
    headline_metrics,
    headline_plots,
    parent_name,
)
from shiftwatch.tracking.runs import (
    PIPELINE_TAG,
    pipeline_execution,
    process_alive,
    process_identity,
    stage_details,
    stage_run,
)
from shiftwatch.tracking.store import EXPERIMENT, flatten_numbers, git_commit, repo_root, tracking_uri

pytestmark = pytest.mark.slow  # MLflow runs, a real server, stages killed mid-run: `make test-fast` leaves it out

PARAMS = load_params(REPO / "params.yaml")  # the schema has no defaults: params.yaml is the one source


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
    outs:
      - metrics/detect_details.json: {cache: false}
      - metrics/plots/detect.png: {cache: false}
    metrics:
      - metrics/detect.json: {cache: false}
  evaluate:
    cmd: python -m stages.evaluate
    params: [shift.label_class, {params.yaml: [evaluate.batch_size]}]
    outs:
      - metrics/plots/evaluate.png: {cache: false}
    metrics:
      - metrics/evaluate.json: {cache: false}
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "metrics" / "plots").mkdir(parents=True)
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
    _write(store / "metrics" / "evaluate.json", {"accuracy": {"test": 0.9, "b_shift": 0.6}})
    assert list(headline_metrics()) == [
        COMPARE_FIRST,
        "detect.b_shift.drift",
        "detect.b_shift.ks_statistic",
        "evaluate.accuracy.test",
    ]  # what MLflow's compare view plots first
    assert headline_metrics(stage="evaluate") == {"evaluate.accuracy.b_shift": 0.6, "evaluate.accuracy.test": 0.9}
    assert headline_plots() == [Path("metrics/plots/detect.png"), Path("metrics/plots/evaluate.png")]
    assert headline_plots(stage="evaluate") == [Path("metrics/plots/evaluate.png")]


def test_the_compare_views_first_metric_is_a_headline_number_of_the_pipeline():
    """COMPARE_FIRST names a number of the committed metrics files: a renamed key fails here,
    not silently in MLflow's compare view."""
    assert COMPARE_FIRST in headline_metrics(REPO)


def test_parents_carry_every_headline_metric_and_plot_whichever_stages_ran(store, monkeypatch):
    params = PARAMS
    (store / "artifact.json").write_text("{}")
    with stage_run("detect", params) as run:  # the baseline: both stages run
        _write(store / "metrics" / "detect.json", {"b_shift": {"ks_statistic": 0.3}})
        (store / "metrics" / "plots" / "detect.png").write_bytes(b"detect 0.1")
        run.log_metric_tree("detect", {"b_shift": {"ks_statistic": 0.3, "ks_pvalue": 0.01}})
        run.log_artifact(store / "artifact.json")
    with stage_run("evaluate", params) as run:
        _write(store / "metrics" / "evaluate.json", {"accuracy": {"b_shift": 0.6}})
        (store / "metrics" / "plots" / "evaluate.png").write_bytes(b"evaluate 0.1")
        run.log_metric_tree("evaluate", {"b_shift": {"accuracy": 0.6, "n": 900}})  # details: another layout
    monkeypatch.setenv("DVC_EXP_NAME", "bright-exp")  # an experiment in which DVC skips evaluate
    with stage_run("detect", params) as run:
        _write(store / "metrics" / "detect.json", {"b_shift": {"ks_statistic": 0.4}})
        (store / "metrics" / "plots" / "detect.png").write_bytes(b"detect 0.2")
        run.log_metrics({"detect.seconds": 2.5})  # a number no metrics file holds

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (store / "mlartifacts").resolve().as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags["dvc.exp_name"]: r for r in runs if r.data.tags.get("shiftwatch.role") == "pipeline"}
    children = {
        (c.data.tags["dvc.exp_name"], c.data.tags["dvc.stage"]): c for c in runs if "mlflow.parentRunId" in c.data.tags
    }
    assert set(parents) == {"workspace", "bright-exp"} and len(children) == 3
    # headline only, and the skipped stage's numbers too; the compare view's first metric first
    assert parents["workspace"].data.metrics == {"detect.b_shift.ks_statistic": 0.3, "evaluate.accuracy.b_shift": 0.6}
    assert parents["bright-exp"].data.metrics == {"detect.b_shift.ks_statistic": 0.4, "evaluate.accuracy.b_shift": 0.6}
    for parent in parents.values():  # the workspace's too, though evaluate.json came after detect's
        assert next(iter(parent.data.metrics)) == COMPARE_FIRST
    # One name per number: a stage run carries its headline numbers under the parent's names,
    # its details as an artifact (not as evaluate.b_shift.accuracy beside evaluate.accuracy.b_shift).
    evaluate = children["workspace", "evaluate"]
    assert evaluate.data.metrics == {"evaluate.accuracy.b_shift": 0.6}
    assert stage_details(client, evaluate.info.run_id) == {"evaluate.b_shift.accuracy": 0.6, "evaluate.b_shift.n": 900}
    detect = children["workspace", "detect"]
    assert detect.data.metrics == {"detect.b_shift.ks_statistic": 0.3}
    assert stage_details(client, detect.info.run_id) == {
        "detect.b_shift.ks_statistic": 0.3,
        "detect.b_shift.ks_pvalue": 0.01,
    }
    assert [a.path for a in client.list_artifacts(detect.info.run_id)] == ["artifact.json", "details"]
    assert children["bright-exp", "detect"].data.metrics == {"detect.b_shift.ks_statistic": 0.4, "detect.seconds": 2.5}
    # The headline plots on each parent: the skipped stage's from disk, each stage's own as it wrote it.
    for name, plots in (
        ("workspace", {"detect.png": b"detect 0.1", "evaluate.png": b"evaluate 0.1"}),
        ("bright-exp", {"detect.png": b"detect 0.2", "evaluate.png": b"evaluate 0.1"}),
    ):
        folder = Path(client.download_artifacts(parents[name].info.run_id, "", str(store / name)))
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == plots, name
    workspace = parents["workspace"]
    assert workspace.data.params["shift.brightness"] == "0.1"  # every param, for side-by-side
    assert len(workspace.data.params) == len(params.flat())
    assert evaluate.data.tags["mlflow.parentRunId"] == workspace.info.run_id
    assert set(evaluate.data.params) == {"shift.label_class", "evaluate.batch_size"}
    assert {
        "dvc.exp_name",
        "dvc.baseline_rev",
        "git.commit",
        PIPELINE_TAG,
        "mlflow.user",
        "mlflow.source.name",
        "mlflow.source.git.commit",
    } <= set(evaluate.data.tags)
    assert evaluate.data.tags["mlflow.source.name"] == "dvc.yaml:evaluate"
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_failing_stage_marks_its_run_and_parent_failed(store):
    _write(store / "metrics" / "detect.json", {"b_shift": {"ks_statistic": 0.3}})  # an earlier run's
    with pytest.raises(RuntimeError), stage_run("detect", PARAMS):
        time.sleep(0.05)
        raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted((r.data.tags.get("dvc.stage", "parent"), r.info.status) for r in runs) == [
        ("detect", "FAILED"),
        ("parent", "FAILED"),
    ]
    child = next(r for r in runs if r.data.tags.get("dvc.stage") == "detect")
    assert child.info.end_time - child.info.start_time >= 50  # open while the stage worked
    assert child.data.metrics == {}  # the file on disk is not this failed run's result ...
    parent = next(r for r in runs if "dvc.stage" not in r.data.tags)
    assert parent.data.metrics["detect.b_shift.ks_statistic"] == 0.3  # ... but still the current one
    assert math.isnan(parent.data.metrics[COMPARE_FIRST])  # its place kept, not measured


def test_parent_names_say_which_params_differ_from_the_baseline(store, monkeypatch):
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (store / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "baseline"]):
        subprocess.run(["git", *command], cwd=store, check=True)
    commit = git_commit(store)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shift"]["brightness"], raw["power"]["sizes"] = 0.2, [10, 20]
    current = parse_params(raw).flat()
    changed = changed_params(current, commit)
    assert changed == {"shift.brightness": 0.2, "power.sizes": [10, 20]}
    assert parent_name({"dvc.baseline_rev": commit, "dvc.exp_name": "bally-loot"}, changed) == (
        "shift.brightness=0.2, power.sizes=[10, 20] (bally-loot)"
    )
    assert changed_params(PARAMS.flat(), commit) == {}  # the baseline itself (tuples vs lists too)
    assert parent_name({"dvc.baseline_rev": commit, "dvc.exp_name": "workspace"}, {}) == (
        f"baseline {commit[:7]} (workspace)"
    )
    assert changed_params(current, "no-such-commit") == {}

    # A baseline from before a key existed (the schema has no defaults to fill it), with a
    # float spelt as an int: the new key is what changed, and 0 is the same setting as 0.0.
    older = yaml.safe_load((REPO / "params.yaml").read_text())
    del older["power"]["detection_repetitions"]
    older["shift"]["brightness"] = 0
    (store / "params.yaml").write_text(yaml.safe_dump(older))
    subprocess.run(["git", "commit", "-qam", "older"], cwd=store, check=True)
    raw["shift"]["brightness"], raw["power"]["sizes"] = 0.0, PARAMS.power.sizes
    assert changed_params(parse_params(raw).flat(), git_commit(store)) == {
        "power.detection_repetitions": PARAMS.power.detection_repetitions
    }


def test_a_store_that_does_not_answer_stops_the_stage_before_its_work(store, monkeypatch):
    """A server that refuses connections fails the stage in one line, before the body runs
    (no outputs), instead of after the work and minutes of MLflow's retries."""
    import socket

    with socket.socket() as probe:  # a free port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    worked = []
    with (
        pytest.raises(ShiftwatchError, match=rf"127\.0\.0\.1:{port} does not answer") as raised,
        stage_run("detect", PARAMS),
    ):
        worked.append(True)
    assert not worked
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- faults: signals, dead processes, a lost server

# A stage that opens its run, says so, then works (sleeps) until stopped.
SLOW_STAGE = """
import sys, time
from shiftwatch.core.stage import run_stage
from shiftwatch.core.params import load_params
from shiftwatch.tracking.runs import stage_run

def main():
    with stage_run("detect", load_params(PARAMS_YAML)):
        print("working", flush=True)
        time.sleep(120)

run_stage("detect", main)
""".replace("PARAMS_YAML", repr(str(REPO / "params.yaml")))


def _start_slow_stage(store: Path, env: dict | None = None) -> subprocess.Popen:
    script = store / "slow_stage.py"
    script.write_text(SLOW_STAGE)
    stage = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=store,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert stage.stdout.readline().strip() == "working"  # the body runs ...
    uri = (env or {}).get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
    deadline = time.monotonic() + 30
    while not _open_runs_of(uri, stage.pid):  # ... and the helper has opened its runs
        assert time.monotonic() < deadline, "the stage's run did not open"
        time.sleep(0.2)
    return stage


def _open_runs_of(uri: str, pid: int) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`dvc.stage` = 'detect' and "
            f"tags.`shiftwatch.process` LIKE '%:{pid}:%'"
        ),
    )


def _statuses(uri: str) -> list[tuple[str, str]]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return sorted((r.data.tags.get("dvc.stage", "parent"), r.info.status) for r in runs)


def test_sigterm_closes_the_stage_runs_as_failed_with_one_line(store):
    stage = _start_slow_stage(store)
    time.sleep(0.5)
    sent = time.monotonic()
    stage.send_signal(signal.SIGTERM)
    _, err = stage.communicate(timeout=30)
    assert stage.returncode == 143
    assert time.monotonic() - sent < 10
    assert err.strip().splitlines() == [
        "shiftwatch detect: terminated (SIGTERM); no output is half-written, rerun the stage"
    ]
    assert _statuses(f"sqlite:///{store / 'mlflow.db'}") == [("detect", "FAILED"), ("parent", "FAILED")]


def test_runs_of_a_killed_stage_are_closed_as_killed_by_the_next_start(store):
    """SIGKILL cannot be handled: the runs stay RUNNING until the next stage start finds their
    process gone. A live stage's runs are left alone."""
    killed = _start_slow_stage(store)
    killed.kill()
    killed.wait(timeout=10)
    alive = _start_slow_stage(store)  # its start sweeps: the killed stage's runs only
    try:
        uri = f"sqlite:///{store / 'mlflow.db'}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        by_status = sorted((r.info.status, r.data.tags.get("dvc.stage", "parent")) for r in runs)
        # two executions (two processes outside DVC), two parents: the dead one's closed too
        assert by_status == [("KILLED", "detect"), ("KILLED", "parent"), ("RUNNING", "detect"), ("RUNNING", "parent")]
        swept = next(r for r in runs if r.info.status == "KILLED")
        assert "process was gone" in swept.data.tags["shiftwatch.closed_by"]
    finally:
        alive.kill()
        alive.wait(timeout=10)
    with stage_run("detect", PARAMS):  # the next start closes the second one too
        pass
    assert _statuses(uri) == [
        ("detect", "FINISHED"),
        ("detect", "KILLED"),
        ("detect", "KILLED"),
        ("parent", "FINISHED"),
        ("parent", "KILLED"),
        ("parent", "KILLED"),
    ]


def test_a_later_execution_does_not_rewrite_an_earlier_parents_status(store):
    """A failed single-stage run after a good pipeline run gets a parent of its own: the
    earlier parent stays FINISHED with its end time."""
    with stage_run("detect", PARAMS):
        pass
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (earlier,) = client.search_runs([experiment_id], "tags.`shiftwatch.role` = 'pipeline'")
    failing = store / "failing_stage.py"
    failing.write_text(
        SLOW_STAGE.replace('print("working", flush=True)\n        time.sleep(120)', 'raise RuntimeError("boom")')
    )
    assert subprocess.run([sys.executable, str(failing)], cwd=store, capture_output=True).returncode == 1
    parents = client.search_runs([experiment_id], "tags.`shiftwatch.role` = 'pipeline'")
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    still = next(r for r in parents if r.info.run_id == earlier.info.run_id)
    assert (still.info.status, still.info.end_time) == ("FINISHED", earlier.info.end_time)


def test_stages_of_one_dvc_process_share_a_parent(tmp_path):
    """The execution is the `dvc` ancestor of the stage process, found through /proc."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: the execution is the stage process itself")
    script = (
        "import os\nfrom shiftwatch.tracking.runs import pipeline_execution\nprint(pipeline_execution(os.getpid()))\n"
    )
    runner = tmp_path / "dvc_runs_twice"  # a process named dvc that runs two stages through sh
    runner.write_text(f"#!/bin/sh\n{sys.executable} -c '{script}'\n{sys.executable} -c '{script}'\n")
    runner.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dvc").symlink_to(runner)
    out = subprocess.run([str(tmp_path / "bin" / "dvc")], capture_output=True, text=True, check=True)
    first, second = out.stdout.split()
    assert first == second  # both stages: the same dvc process
    alone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert alone.stdout.strip() != first  # outside DVC: the stage itself
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    assert pipeline_execution(int(gone.stdout)) == ""  # no /proc entry (as on macOS): no execution in the key


def test_process_identity_tells_a_reused_pid_from_the_original():
    me = process_identity(os.getpid())
    assert process_alive(me)
    host, pid, started = me.rsplit(":", 2)
    assert not process_alive(f"{host}:{pid}:{int(started) + 1}")  # same pid, another start time
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    assert not process_alive(f"{host}:{finished.stdout.strip()}:")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real tracking server on a SQLite backend in `folder`, answering /health."""
    import requests

    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            time.sleep(0.5)
    _stop(server)
    raise AssertionError("mlflow server did not start")


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def test_a_server_killed_mid_stage_stops_the_stage_in_seconds_and_no_run_stays_running(store, monkeypatch):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(store, port)
    try:
        stage = _start_slow_stage(store, {"MLFLOW_TRACKING_URI": uri})
        _stop(server)  # the server goes while the stage computes
        gone = time.monotonic()
        _, err = stage.communicate(timeout=60)
        assert time.monotonic() - gone <= 10
        assert stage.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"shiftwatch detect: error: the MLflow tracking store at {uri} stopped answering mid-stage"
        )
        server = _mlflow_server(store, port)  # back, same database: the runs were left RUNNING
        assert ("detect", "RUNNING") in _statuses(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with stage_run("detect", PARAMS):  # the next stage's start closes them
            pass
        assert _statuses(uri) == [
            ("detect", "FINISHED"),
            ("detect", "KILLED"),
            ("parent", "FINISHED"),
            ("parent", "KILLED"),
        ]
    finally:
        _stop(server)


@pytest.mark.parametrize("command", [["timeline", "--png", "{tmp}/t.png"], ["check", "{batch}", "--log"]])
def test_operator_commands_fail_in_seconds_with_one_line_on_a_dead_server(command, tmp_path, monkeypatch):
    """No server on the port: one line and exit 2 within 10 s (it was ~250 s of MLflow's
    retries and, for `timeline`, a 112-line traceback)."""
    import numpy as np
    from conftest import REPO

    port = _free_port()
    batch = tmp_path / "batch.npy"  # the store is asked before the model or reference is read
    np.save(batch, np.random.default_rng(0).random((20, 28, 28), dtype=np.float32))
    argv = [part.format(tmp=tmp_path, batch=batch) for part in command]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "shiftwatch", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        timeout=120,
    )
    assert time.monotonic() - started <= 10  # `check --log` asks the store before the check
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1
    assert f"127.0.0.1:{port} does not answer" in errors[0]


def test_sigterm_stops_a_stage_with_busy_workers_at_once_and_leaves_none(tmp_path):
    """`fork_map` terminates its workers when the stage is stopped, instead of finishing the
    queue (power's streams ran for minutes after a SIGTERM)."""
    script = tmp_path / "busy_stage.py"
    # one os.write per line: two workers' lines cannot interleave on the pipe (print's could)
    script.write_text(
        "import os, time\n"
        "from shiftwatch.core.stage import run_stage\n"
        "from shiftwatch.core.workers import fork_map\n"
        "def work(item):\n"
        "    os.write(1, f'worker {os.getpid()}\\n'.encode())\n"
        "    time.sleep(120)\n"
        "run_stage('power', lambda: fork_map(work, range(6)))\n"
    )
    stage = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [int(stage.stdout.readline().split()[1]) for _ in range(2)]
    sent = time.monotonic()
    stage.send_signal(signal.SIGTERM)  # to the stage only, as `timeout` does
    _, err = stage.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert stage.returncode == 143 and err.strip().splitlines() == [
        "shiftwatch power: terminated (SIGTERM); no output is half-written, rerun the stage"
    ]
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
