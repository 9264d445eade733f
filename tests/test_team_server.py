"""A team's setup, for real: a throw-away PostgreSQL cluster, `mlflow server` on it with proxied
artifacts, a teammate's copy of the session's small `dvc repro` evaluated on it, then four queued
experiments run two at a time (`dvc queue start -j 2`). Every stage run of every experiment must
land, none left RUNNING, and artifacts must come back through the server.

Then the wrapper's faults, injected for real into `tools/team_server.py` run as a subprocess:
SIGKILL (orphans left running), SIGTERM, a stale postmaster.pid, a busy port, a broken cluster."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import migrate_store  # tools/, on pytest's path (pytest.ini): maintainer tools, not part of the package
import numpy as np
import pytest
import team_server
from conftest import REPO, needs_fashion_mnist
from test_migrate import check_copy, make_history
from test_pipeline import SHIFT_STAGES, STAGES, _env

from shiftwatch.core.io import load_set
from shiftwatch.core.lineage import file_md5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(  # PostgreSQL + mlflow servers: not in `make test-fast`
        not (team_server.PG_BIN / "initdb").exists(), reason="PostgreSQL 15 not installed: apt-get install postgresql"
    ),
]
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
        mlflow = team_server.start_mlflow(backend, folder, port)
        yield f"http://127.0.0.1:{port}"
    finally:  # a throw-away server: killed, not stopped gracefully (that took ~15 s; the SIGTERM tests check it)
        if mlflow is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow.pid, signal.SIGKILL)  # `mlflow server` leads its group: uvicorn, job consumers
            mlflow.wait(timeout=30)
        _kill_everything_from(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)


def _run(repo: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=repo, env={**_env(repo), "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def _dvc(repo: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    return _run(repo, uri, sys.executable, "-m", "dvc", *args)


@needs_fashion_mnist
def test_four_experiments_two_at_a_time_lose_nothing_on_the_server(server, reproduced, tmp_path):
    from mlflow import MlflowClient

    from shiftwatch.tracking.store import EXPERIMENT

    # A teammate's checkout: the session's small `dvc repro` (as after `dvc pull`), without its
    # local MLflow store. `evaluate` on the server registers the model and makes it @champion
    # (train did not run here), then the experiments run from that baseline.
    repo = reproduced.fresh_copy(tmp_path / "repo")
    (repo / "mlflow.db").unlink()
    shutil.rmtree(repo / "mlartifacts")
    _dvc(repo, server, "repro", "-f", "-s", "evaluate")
    _run(repo, server, "git", "add", "-A")
    _run(repo, server, "git", "commit", "-qm", "baseline evaluated on the server", "--allow-empty")
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
    baseline = [
        r for r in runs if r.data.tags.get("dvc.stage") in STAGES and r.data.tags.get("dvc.exp_name") == "workspace"
    ]
    assert [r.data.tags["dvc.stage"] for r in baseline] == ["evaluate"]
    for value in BRIGHTNESS:
        landed = [r for r in runs if r.data.tags.get("dvc.exp_name") == f"b{value}"]
        assert sorted(r.data.tags.get("dvc.stage", "pipeline") for r in landed) == sorted(
            ("pipeline", *SHIFT_STAGES)
        ), value
        parent = next(r for r in landed if r.data.tags.get("shiftwatch.role") == "pipeline")
        assert parent.data.params["shift.brightness"] == value

    for evaluate in (r for r in runs if r.data.tags.get("dvc.stage") == "evaluate"):
        plots = [a.path for a in client.list_artifacts(evaluate.info.run_id, "plots")]
        assert plots, f"{evaluate.data.tags['dvc.exp_name']}: evaluate's figures did not come back through the server"
    details = client.download_artifacts(baseline[0].info.run_id, "evaluate_details.json", str(tmp_path))
    assert "b_shift" in Path(details).read_text()

    # The registry on the server: one version (every experiment reused the model), the champion,
    # and `check` loading it through the server by its models:/ URI.
    (version,) = client.search_model_versions("name = 'shiftwatch-resnet18'")
    assert client.get_model_version_by_alias("shiftwatch-resnet18", "champion").version == version.version
    np.save(tmp_path / "b_shift.npy", load_set(repo / "data" / "shifted" / "b_shift.npz").images[:300])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftwatch",
            "check",
            str(tmp_path / "b_shift.npy"),
            "--model",
            "models:/shiftwatch-resnet18@champion",
            "--quiet",
        ],
        cwd=repo,
        env={**_env(repo), "MLFLOW_TRACKING_URI": server, "XDG_CACHE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # b_shift drifts
    assert file_md5(next(tmp_path.glob("shiftwatch/models/shiftwatch-resnet18/*/resnet18.pt"))) == file_md5(
        repo / "models" / "resnet18.pt"
    )


@needs_fashion_mnist
def test_a_local_history_moves_to_the_server(server, tmp_path):
    """tools/migrate_store.py from a local SQLite store to the PostgreSQL-backed server."""
    source = f"sqlite:///{tmp_path / 'local.db'}"
    make_history(source, tmp_path, experiment="someone's laptop", model="laptop-model")
    counts = migrate_store.migrate(source, server, log=lambda _: None)
    assert (counts["runs"], counts["versions"]) == (2, 1)
    check_copy(server, tmp_path, experiment="someone's laptop", model="laptop-model")


# ---------------------------------------------------------------- the wrapper's faults, injected for real

SERVER_UP = "MLflow server on PostgreSQL is up."
STOP_BOUND_S = 30  # the wrapper's own bound (20 s SIGTERM, then SIGKILL) plus slack


class Site:
    """A throw-away server folder and the wrappers started on it."""

    def __init__(self, folder: Path):
        self.folder, self.wrappers = folder, []

    def start(self, port: int) -> subprocess.Popen:
        with (self.folder / f"wrapper-{len(self.wrappers)}.out").open("w") as output:
            wrapper = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tools" / "team_server.py"),
                    "--folder",
                    str(self.folder),
                    "--port",
                    str(port),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            )
        self.wrappers.append(wrapper)
        return wrapper

    def output(self, wrapper: subprocess.Popen) -> str:
        return (self.folder / f"wrapper-{self.wrappers.index(wrapper)}.out").read_text()

    def wait_up(self, wrapper: subprocess.Popen, timeout_s: float = 150) -> float:
        """Seconds until the wrapper says the server is up; fails the test if it exits first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if SERVER_UP in self.output(wrapper):
                return time.monotonic() - started
            if wrapper.poll() is not None:
                pytest.fail(f"the wrapper exited with {wrapper.returncode}: {self.output(wrapper)}")
            time.sleep(0.2)
        pytest.fail(f"the wrapper was not up within {timeout_s} s: {self.output(wrapper)}")


@pytest.fixture
def site():
    """Whatever a test starts in its folder is killed afterwards, whether the test passed or not."""
    folder = Path(tempfile.mkdtemp(prefix="shiftwatch-wrapper-"))  # not 0700: as root, PostgreSQL runs as `postgres`
    os.chmod(folder, 0o755)
    site = Site(folder)
    try:
        yield site
    finally:
        for wrapper in site.wrappers:
            wrapper.kill()
            wrapper.wait(timeout=30)
        _kill_everything_from(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _kill_everything_from(folder: Path) -> None:
    pg_ctl = [str(team_server.PG_BIN / "pg_ctl"), "-D", str(folder / "postgres"), "-m", "immediate", "stop"]
    subprocess.run(team_server._as_postgres(pg_ctl), capture_output=True, timeout=60)
    for pid in _pids():
        if str(folder) in _cmdline(pid):  # the postmaster (-D) and `mlflow server` (--artifacts-destination)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)  # both lead their own group


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent_and_state(pid: int) -> tuple[int, str] | None:
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return int(ppid), state


def _running(pid: int) -> bool:
    found = _parent_and_state(pid)
    return found is not None and found[1] not in ("Z", "X")  # a zombie has exited


def _descendants(root: int) -> list[int]:
    parents = {pid: found[0] for pid in _pids() if (found := _parent_and_state(pid))}
    family, added = {root}, True
    while added:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family, added = family | children, bool(children)
    return sorted(family - {root})


def _server_processes(site: Site, wrapper: subprocess.Popen) -> list[int]:
    """PostgreSQL's postmaster (from its own postmaster.pid) and its children, and everything the
    wrapper started below it (`mlflow server`, uvicorn and its workers, MLflow's job consumers)."""
    postmaster = int((site.folder / "postgres" / "postmaster.pid").read_text().split()[0])
    return [postmaster, *_descendants(postmaster), *_descendants(wrapper.pid)]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _assert_sigterm_stops_everything(site: Site, wrapper: subprocess.Popen, port: int) -> float:
    processes = _server_processes(site, wrapper)
    assert len(processes) > 5, processes  # a postmaster with children, mlflow with uvicorn: the check can fail
    sent = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=STOP_BOUND_S) == 0
    while [pid for pid in processes if _running(pid)] and time.monotonic() - sent < STOP_BOUND_S:
        time.sleep(0.2)
    left = [f"{pid}: {_cmdline(pid)[:100]}" for pid in processes if _running(pid)]
    assert not left, left
    assert _port_free(port)
    assert not (site.folder / "postgres" / "postmaster.pid").exists()
    lines = site.output(wrapper).splitlines()
    assert lines[0].startswith(SERVER_UP) and lines[-1] == "SIGTERM: MLflow server and PostgreSQL stopped."
    assert "Traceback" not in site.output(wrapper)
    return time.monotonic() - sent


def test_sigterm_stops_mlflow_and_postgres_and_exits_cleanly(site):
    port = team_server.free_port()
    wrapper = site.start(port)
    site.wait_up(wrapper)
    print(f"SIGTERM: everything gone after {_assert_sigterm_stops_everything(site, wrapper, port):.1f} s")


def test_a_wrapper_killed_by_sigkill_restarts_over_its_orphans_and_loses_nothing(site):
    from mlflow import MlflowClient

    port = team_server.free_port()
    uri = f"http://127.0.0.1:{port}"
    first = site.start(port)
    site.wait_up(first)
    before = MlflowClient(uri).create_experiment("before the crash")
    orphans = _server_processes(site, first)
    first.kill()
    first.wait(timeout=30)
    assert _running(orphans[0])  # the fault is real: PostgreSQL outlived its wrapper ...
    assert not _port_free(port)  # ... and so did `mlflow server`

    second = site.start(port)
    seconds = site.wait_up(second)
    assert not [pid for pid in orphans if _running(pid)]  # stopped, not left beside the new ones
    client = MlflowClient(uri)
    assert client.get_experiment(before).name == "before the crash"
    assert client.get_experiment(client.create_experiment("after the crash")).name == "after the crash"
    assert site.output(second).startswith(SERVER_UP)
    print(f"restart after SIGKILL: up in {seconds:.1f} s")
    _assert_sigterm_stops_everything(site, second, port)


@pytest.mark.parametrize("left_by", ["a process now gone", "a program that reused the pid"])
def test_a_stale_postmaster_pid_does_not_break_the_start(site, left_by):
    """After a power cut postmaster.pid stays; after the reboot its pid is free, or someone else's."""
    team_server.start_postgres(site.folder, team_server.free_port())
    pidfile = site.folder / "postgres" / "postmaster.pid"
    stale = pidfile.read_text().splitlines()
    team_server.stop_postgres(site.folder)
    squatter = None
    if left_by == "a program that reused the pid":  # same user as the cluster, so postgres itself refuses
        squatter = subprocess.Popen(["sleep", "60"], user="postgres" if os.geteuid() == 0 else None)
        stale[0] = str(squatter.pid)
    pidfile.write_text("\n".join(stale) + "\n")
    try:
        backend = team_server.start_postgres(site.folder, team_server.free_port())
        import psycopg2

        connection = psycopg2.connect(backend.replace("postgresql+psycopg2", "postgresql"))
        try:
            cursor = connection.cursor()
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
        finally:
            connection.close()
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait()


def test_an_orphaned_cluster_that_will_not_stop_is_one_line_with_the_command_to_run(site, monkeypatch):
    team_server.start_postgres(site.folder, team_server.free_port())
    postmaster = int((site.folder / "postgres" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)  # hung: pg_ctl stop cannot stop it
    try:
        monkeypatch.setattr(team_server, "STOP_TIMEOUT_S", 2)
        with pytest.raises(SystemExit) as failure:
            team_server.start_postgres(site.folder, team_server.free_port())
    finally:
        os.kill(postmaster, signal.SIGCONT)
    message = str(failure.value)
    assert "\n" not in message
    assert f"(pid {postmaster})" in message and f"pg_ctl -D {site.folder / 'postgres'} -m immediate stop" in message


def test_a_busy_port_is_one_line_naming_the_port_and_its_holder(site):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        wrapper = site.start(port)
        assert wrapper.wait(timeout=60) == 1
    lines = site.output(wrapper).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"port {port} is in use by pid {os.getpid()} ("), lines
    assert not (site.folder / "postgres").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("broken", "first_words"),
    [
        ("a file where the cluster goes", "initdb failed"),
        ("a cluster without its files", "PostgreSQL did not start"),
    ],
)
def test_a_failing_initdb_or_pg_ctl_is_one_line(site, broken, first_words):
    data = site.folder / "postgres"
    if broken == "a file where the cluster goes":
        data.write_text("not a cluster")
    else:
        data.mkdir(mode=0o700)
        (data / "PG_VERSION").write_text("15\n")
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
    wrapper = site.start(team_server.free_port())
    assert wrapper.wait(timeout=60) == 1
    lines = site.output(wrapper).splitlines()
    assert len(lines) == 1 and lines[0].startswith(first_words), lines
