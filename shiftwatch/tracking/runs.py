"""MLflow for every stage execution: one store at the repository root, one experiment,
one parent run per pipeline execution with a child run per stage.

Grouping: the parent run is keyed by the DVC experiment name (or "workspace"), the git
commit, a hash of params.yaml and the execution (the `dvc` process running the stages, so a
later `dvc repro -s monitor` gets a parent of its own), and named after the params that differ from the baseline
commit ("shift.brightness=0.2"). A stage's child run opens when the stage starts, so its
duration is the stage's and a crash leaves a FAILED run.

One name per number (see shiftwatch.tracking.dvc): the metrics of both runs are headline
numbers, named as DVC names them. The parent holds all params, every number of the DVC metrics
files dvc.yaml declares and every PNG plot it declares as an output, re-read from disk after
each stage. Files of stages that DVC skipped are current (DVC checked them), so every parent
carries the same metrics and plots, whichever stages ran. The stage run holds the stage's own
params (the keys dvc.yaml declares for it), its own headline numbers under the parent's names,
the numbers it logs one by one (training curves, durations), and its artifacts; its detailed
numbers are the JSON artifacts details/<prefix>.json (read back with `stage_details`), not
metric columns: MLflow's runs table shows every metric key of every run as a column.

Runs left RUNNING by a process that is gone (SIGKILL, a crash) are closed as KILLED by the
next stage start. Where the store is: `shiftwatch.tracking.store`.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shiftwatch import ShiftwatchError
from shiftwatch.tracking.dvc import (
    COMPARE_FIRST,
    changed_params,
    declared_params,
    headline_metrics,
    headline_plots,
    parent_name,
)
from shiftwatch.tracking.store import (
    STORE_TIMEOUT_S,
    _open_store,
    _retry,
    dvc_tags,
    flatten_numbers,
    numbers_only,
    one_line,
    server_problem,
    tracking_uri,
    unreachable,
)

PIPELINE_TAG = "shiftwatch.pipeline"
DETAILS = "details"  # a stage run's artifact folder of detailed numbers (log_metric_tree)


def pipeline_key(params_json: str, tags: dict[str, str], execution: str = "") -> str:
    """Which parent run a stage belongs to: the experiment, commit and params, and the
    execution (one `dvc repro` or `dvc exp run`), so that a later run of a single stage does
    not rewrite the status and end time of an earlier execution's parent."""
    params_hash = hashlib.sha256(params_json.encode()).hexdigest()[:12]
    return f"{tags['dvc.exp_name']}@{tags['git.commit'][:12]}#{params_hash}" + (f"/{execution}" if execution else "")


def pipeline_execution(pid: int) -> str:
    """host:pid:start of the `dvc` process that runs the stage `pid` (repro, exp run, a queue
    worker), or of the stage itself when it runs outside DVC. Empty where there is no /proc to
    walk up (macOS): then every execution with the same key shares a parent, as before."""
    if not Path(f"/proc/{pid}/stat").exists():
        return ""
    return process_identity(_dvc_ancestor(pid) or pid)


def _dvc_ancestor(pid: int) -> int | None:
    for _ in range(32):  # stage <- sh <- dvc, and a few more levels for queue workers
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if any(Path(arg.decode(errors="replace")).name == "dvc" for arg in args[:2]) or args[1:3] == [b"-m", b"dvc"]:
            return pid
        fields = _proc_stat(pid)
        pid = int(fields[1]) if fields else 0  # the parent process
        if pid <= 1:
            return None
    return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...; field 3 on),
    None where unreadable. The name is cut at the last ")", as it may hold spaces."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


class StageRun:
    """What a stage script logs through: its own run's params, metrics, tags and artifacts.

    Each call is queued to a helper process (see `stage_run`), which does the MLflow work while
    the stage goes on; files passed to `log_artifact` must be complete when it is called.
    """

    def __init__(self, commands):
        self._commands = commands

    def log_params(self, params: dict[str, object]) -> None:
        self._commands.put(("log_params", (dict(params),)))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._commands.put(("log_metrics", (dict(metrics), step)))

    def log_metric_tree(self, prefix: str, tree: dict) -> None:
        """Record the numbers of a nested dict of detailed results as the run's JSON artifact
        details/<prefix>.json (`stage_details` reads them back as prefix.a.b.c), not as metric
        columns: the run's metrics are its headline numbers, logged when the stage ends."""
        self._commands.put(("log_details", (prefix, numbers_only(tree))))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._commands.put(("log_artifact", (str(path), folder)))

    def log_model(self, model, input_example) -> None:
        """The trained network as an MLflow model (the DVC-tracked state_dict stays what the
        pipeline itself loads)."""
        self._commands.put(("log_model", (model, input_example)))

    def set_tag(self, key: str, value: str) -> None:
        self._commands.put(("set_tag", (key, str(value))))

    def log_dataset(self, path: str | Path, context: str) -> None:
        """Record a file (or folder) the stage read as an MLflow dataset input, its md5 (the
        digest DVC records for it) as digest: the run links back to the exact data."""
        self._commands.put(("log_dataset", (str(path), context)))

    def register_model(self, path: str | Path, name: str) -> None:
        """Make the state_dict at `path` a version of the registered model `name` (unless a
        version with the same md5 exists), tagged with its md5, git commit and DVC experiment."""
        self._commands.put(("register_model", (str(path), name)))

    def promote_champion(
        self,
        path: str | Path,
        name: str,
        test_accuracy: float,
        tolerance_points: float,
        promote_from: str = "workspace",
    ) -> None:
        """Score the model at `path` (registering it first if `train` did not, e.g. after
        `dvc pull`) and move `@champion` to it if it passes the gate (see registry.promote);
        with promote_from="workspace", a DVC experiment scores its model but never moves it."""
        self._commands.put(("promote_champion", (str(path), name, test_accuracy, tolerance_points, promote_from)))


class _Logger:
    """The MLflow side of a stage run, in the helper process."""

    def __init__(self, store: tuple, stage: str, params, started_ms: int, stage_pid: int):
        self.client = client = store[0]
        self.stage = stage
        experiment_id = store[1]
        self.tags = tags = dvc_tags(stage)
        key = pipeline_key(params.model_dump_json(), tags, pipeline_execution(stage_pid))
        process = {PROCESS_TAG: process_identity(stage_pid)}
        close_dead_runs(client, experiment_id)
        self.parent_id = _retry(
            lambda: _parent_run(client, experiment_id, key, tags, params.flat(), started_ms, process)
        )
        self.run_id = _retry(
            lambda: client.create_run(
                experiment_id,
                run_name=stage,
                start_time=started_ms,
                tags={**tags, **process, PIPELINE_TAG: key, "mlflow.parentRunId": self.parent_id},
            )
        ).info.run_id
        self.log_params(params.flat(*declared_params(stage)))

    def log_params(self, params: dict[str, object]) -> None:
        _log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        _log_metrics(self.client, self.run_id, metrics, step)

    def log_artifact(self, path: str, folder: str | None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, path, folder))

    def log_details(self, prefix: str, tree: dict) -> None:
        _retry(lambda: self.client.log_dict(self.run_id, tree, f"{DETAILS}/{prefix}.json"))

    def log_model(self, model, input_example) -> None:
        import mlflow

        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", input_example=input_example)

    def set_tag(self, key: str, value: str) -> None:
        _retry(lambda: self.client.set_tag(self.run_id, key, value))

    def log_dataset(self, path: str, context: str) -> None:
        from shiftwatch.core.lineage import md5_of
        from shiftwatch.tracking.registry import dataset_input

        entry = dataset_input(path, md5_of(path), context)
        _retry(lambda: self.client.log_inputs(self.run_id, [entry]))

    def register_model(self, path: str, name: str):
        from shiftwatch.core.lineage import file_md5
        from shiftwatch.tracking.registry import register

        tags = {k: v for k, v in self.tags.items() if not k.startswith("mlflow.")}
        md5 = file_md5(path)
        version, created = _retry(lambda: register(self.client, self.run_id, name, path, md5, tags))
        self.set_tag("registry.version", f"{name}/{version.version}")
        print(
            f"{self.stage}: {path} is {name} version {version.version}"
            f"{'' if created else ' (registered before: same md5)'}",
            flush=True,
        )
        return version

    def promote_champion(
        self, path: str, name: str, test_accuracy: float, tolerance_points: float, promote_from: str
    ) -> None:
        from shiftwatch.tracking.registry import CHAMPION, promote

        version = self.register_model(path, name)
        experiment = self.tags["dvc.exp_name"]
        blocked = (
            f"scored in experiment {experiment}; registry.promote_from = workspace"
            if experiment != "workspace" and promote_from == "workspace"
            else None
        )
        decision = _retry(lambda: promote(self.client, name, version, test_accuracy, tolerance_points, blocked=blocked))
        self.set_tag("registry.champion", str(decision["promoted"]).lower())
        moved = "is now" if decision["promoted"] else "stays"
        holder = decision["version"] if decision["promoted"] else decision["champion_before"]
        print(
            f"{self.stage}: {name}@{CHAMPION} {moved} {'unset' if holder is None else f'version {holder}'} "
            f"({decision['reason']})",
            flush=True,
        )

    def end(self, status: str, ended_ms: int) -> None:
        """Close the stage run with its own headline numbers (a failed stage's files are the
        previous run's: none then), then give the parent every headline metric and plot now
        on disk."""
        finished = status == "FINISHED"
        if finished:
            _log_metrics(self.client, self.run_id, headline_metrics(stage=self.stage))
        _retry(lambda: self.client.set_terminated(self.run_id, status, end_time=ended_ms))
        _log_metrics(self.client, self.parent_id, headline_metrics())
        self._log_parent_plots(own=finished)
        _retry(lambda: self.client.set_terminated(self.parent_id, status, end_time=ended_ms))

    def _log_parent_plots(self, own: bool) -> None:
        """Copy to the parent this stage's headline plots (`own`: it just wrote them) and every
        other one on disk that the parent lacks (a stage DVC skipped, such as `power` on a
        fresh clone whose dvc.lock matched). At the artifact root: MLflow's compare view shows
        the files (not folders) its runs have in common side by side."""
        logged = {a.path for a in _retry(lambda: self.client.list_artifacts(self.parent_id))}
        mine = set(headline_plots(stage=self.stage)) if own else set()
        for path in headline_plots():
            if path.is_file() and (path in mine or path.name not in logged):
                _retry(lambda path=path: self.client.log_artifact(self.parent_id, str(path)))


def _serve(commands, outcome) -> None:
    """The helper process: import MLflow, then open the runs on "open", apply the queued calls,
    and close the runs at "end". Exits if the stage process dies without saying "end". If the
    store fails before "end" (a server that went away, found by a call or by the heartbeat),
    it reports why and signals the stage (SIGUSR1), which stops within seconds."""
    for stop in (signal.SIGINT, signal.SIGTERM):  # the stage's to handle; "end" follows
        signal.signal(stop, signal.SIG_IGN)
    parent = os.getppid()
    try:
        store = _open_store()
    except BaseException as err:
        outcome.put(("ready", getattr(err, "problem", None) or one_line(err)))
        return
    outcome.put(("ready", None))
    heartbeat = _Heartbeat(tracking_uri())
    name = None
    try:
        logger = None
        while True:
            try:
                name, args = commands.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # orphaned: the stage was killed
                    return
                if logger is not None:
                    heartbeat.check()
                continue
            if name == "open":
                stage, params, started_ms = args
                logger = _Logger(store, stage, params, started_ms, stage_pid=parent)
            elif name == "quit":  # the stage stopped before its run opened
                return
            else:
                getattr(logger, name)(*args)
            if name == "end":
                break
        outcome.put(("done", None))
    except BaseException as err:  # reported to the stage, which fails with it
        outcome.put(("done", one_line(err)))
        if name != "end":  # the stage is still working: stop it now, not after its work
            os.kill(parent, STORE_LOST_SIGNAL)


# Sent by the helper to its stage when the store fails mid-stage.
STORE_LOST_SIGNAL = signal.SIGUSR1
HEARTBEAT_S = 2.0  # a server is asked every HEARTBEAT_S while the stage computes ...
HEARTBEAT_MISSES = 2  # ... and declared gone after this many unanswered asks in a row


class _Heartbeat:
    """Asks a tracking server whether it still answers while the stage works without logging,
    so a stage of minutes stops seconds after its server goes, not at its end."""

    def __init__(self, uri: str):
        self.uri = uri if uri.startswith(("http://", "https://")) else None
        self.asked, self.misses = time.monotonic(), 0

    def check(self) -> None:
        if self.uri is None or time.monotonic() - self.asked < HEARTBEAT_S:
            return
        problem = server_problem(self.uri, timeout=HEARTBEAT_S)
        self.asked = time.monotonic()
        self.misses = self.misses + 1 if problem else 0
        if self.misses >= HEARTBEAT_MISSES:
            raise ConnectionError(f"no answer to {HEARTBEAT_MISSES} health checks in a row: {problem}")


def _log_params(client, run_id: str, params: dict[str, object]) -> None:
    from mlflow.entities import Param

    entries = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(entries), 100):  # log_batch takes at most 100 params
        _retry(lambda: client.log_batch(run_id, params=entries[start : start + 100]))


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for start in range(0, len(entries), 500):  # log_batch takes at most 1000 entries
        _retry(lambda: client.log_batch(run_id, metrics=entries[start : start + 500]))


_started_helper: tuple | None = None  # (process, commands, outcome) from start_helper()


def start_helper() -> None:
    """Fork the MLflow helper now, before the stage imports torch and friends, so that importing
    MLflow (~1 s) and opening the store overlap those imports instead of the stage's work.
    `stages/__init__.py` calls this when a stage runs as `python -m stages.<name>`; without it,
    `stage_run` forks the helper itself."""
    global _started_helper
    if _started_helper is None:
        _started_helper = _fork_helper()
        atexit.register(_quit_unused_helper)


def _fork_helper() -> tuple:
    context = multiprocessing.get_context("fork")
    commands, outcome = context.Queue(), context.Queue()
    helper = context.Process(target=_serve, args=(commands, outcome), name="mlflow-helper", daemon=True)
    helper.start()
    return helper, commands, outcome


def _quit_unused_helper() -> None:
    """A stage that failed before its run opened (a bad parameter) leaves no helper behind."""
    if _started_helper is not None and _started_helper[0].is_alive():
        _started_helper[1].put(("quit", ()))
        _started_helper[0].join(timeout=5)


@contextmanager
def stage_run(stage: str, params) -> Iterator[StageRun]:
    """The MLflow run of `stage`, open for as long as the stage works.

    Wrap the stage's whole work in it: the run ends FINISHED, or FAILED if the body raises.
    Either way the parent then gets every headline metric on disk, so it never has holes.
    MLflow itself runs in a helper process (see `start_helper`): importing it and opening the
    SQLite store costs ~2 s, which then overlaps the stage instead of adding to it. The block
    exits only once everything is logged, so a queued experiment's clone can go right after.
    """
    global _started_helper
    started_ms = int(time.time() * 1000)
    if _started_helper is not None and _started_helper[0].is_alive():
        (helper, commands, outcome), _started_helper = _started_helper, None
    else:
        helper, commands, outcome = _fork_helper()
    problem = _ready(helper, outcome)
    if problem:  # before any work: no outputs, no half-logged run
        raise ShiftwatchError(unreachable(tracking_uri(), problem))
    commands.put(("open", (stage, params, started_ms)))
    status = "FAILED"
    previous = signal.signal(STORE_LOST_SIGNAL, lambda signum, frame: _store_lost(outcome))
    try:
        yield StageRun(commands)
        status = "FINISHED"
    finally:
        signal.signal(STORE_LOST_SIGNAL, previous)
        commands.put(("end", (status, int(time.time() * 1000))))
        problem = _wait(helper, outcome)
        if problem and status == "FINISHED":  # else the stage's own error is the one to report
            raise ShiftwatchError(
                f"logging to MLflow at {tracking_uri()} failed ({problem}); check MLFLOW_TRACKING_URI or the store"
            )


def _store_lost(outcome) -> None:
    """The helper's signal: the store failed while the stage worked; stop the stage now."""
    try:
        problem = outcome.get(timeout=2)[1]
    except queue.Empty:
        problem = "the MLflow helper reported no reason"
    raise ShiftwatchError(
        f"the MLflow tracking store at {tracking_uri()} stopped answering mid-stage "
        f"({problem}); the stage stopped, no output is half-written; rerun it once "
        "the store is back"
    )


def _ready(helper, outcome) -> str | None:
    """Wait for the helper to reach the store: None, or what went wrong."""
    deadline = time.monotonic() + STORE_TIMEOUT_S + 30  # + importing MLflow on a slow machine
    while time.monotonic() < deadline:
        try:
            return outcome.get(timeout=0.5)[1]
        except queue.Empty:
            if not helper.is_alive():
                return f"the MLflow helper process exited with code {helper.exitcode}"
    helper.kill()
    return f"no answer within {STORE_TIMEOUT_S + 30} s"


def _wait(helper, outcome) -> str | None:
    """The helper's report (None = all logged), waiting for it to finish its queue."""
    while True:
        try:
            problem = outcome.get(timeout=0.5)[1]
            break
        except queue.Empty:
            if not helper.is_alive():
                problem = f"the MLflow helper process exited with code {helper.exitcode}"
                break
    helper.join()
    return problem


def _parent_run(
    client,
    experiment_id: str,
    key: str,
    tags: dict[str, str],
    all_params: dict[str, object],
    started_ms: int,
    process: dict[str, str],
) -> str:
    """This pipeline execution's parent run (created by its first stage), marked RUNNING and
    tagged with the process of the stage that holds it open."""
    found = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`shiftwatch.role` = 'pipeline'"),
        max_results=1,
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        client.set_tag(found[0].info.run_id, PROCESS_TAG, process[PROCESS_TAG])
        return found[0].info.run_id
    run_tags = {k: v for k, v in tags.items() if k != "dvc.stage"}
    run_tags["mlflow.source.name"] = "dvc.yaml"
    name = parent_name(tags, changed_params(all_params, tags["dvc.baseline_rev"]))
    run = client.create_run(
        experiment_id,
        run_name=name,
        start_time=started_ms,
        tags={**run_tags, **process, PIPELINE_TAG: key, "shiftwatch.role": "pipeline"},
    )
    _log_params(client, run.info.run_id, all_params)
    if COMPARE_FIRST not in headline_metrics():  # a first run, no metrics files yet: keep the
        # metric's place first (MLflow lists a run's metrics in the order they were first
        # logged), NaN until `evaluate` writes it, as of the stage's start (older: replaced)
        from mlflow.entities import Metric

        client.log_batch(run.info.run_id, metrics=[Metric(COMPARE_FIRST, float("nan"), started_ms, 0)])
    return run.info.run_id


def stage_details(client, run_id: str) -> dict[str, float]:
    """A stage run's detailed numbers (its details/<prefix>.json artifacts), flat as
    prefix.a.b.c: the keys they had when stages logged them as metrics; {} if it has none."""
    import json
    import tempfile

    if not _retry(lambda: client.list_artifacts(run_id, DETAILS)):
        return {}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the caller's output is its own
    numbers: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        local = Path(_retry(lambda: client.download_artifacts(run_id, DETAILS, folder)))
        for path in sorted(local.glob("*.json")):
            numbers.update(flatten_numbers(json.loads(path.read_text()), path.stem))
    return numbers


# ---------------------------------------------------------------- runs whose process is gone

PROCESS_TAG = "shiftwatch.process"  # host:pid:start time of the process that holds a run open


def process_identity(pid: int) -> str:
    """host:pid:start, unique even when the system reuses a pid."""
    return f"{socket.gethostname()}:{pid}:{_started(pid) or ''}"


def process_alive(identity: str) -> bool:
    """Whether the process named by process_identity() still runs (on this host)."""
    _, pid, started = identity.rsplit(":", 2)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):  # another user's process, or a tag we did not write
        return True
    return not started or _started(int(pid)) in (None, started)


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]  # field 22 of the stat line


def close_dead_runs(client, experiment_id: str) -> list[str]:
    """Close as KILLED every run of this host left RUNNING by a process that is gone (SIGKILL,
    a crash, a store lost mid-stage), so no run shows as running forever; returns their ids.
    Runs opened on other hosts cannot be checked from here and are left as they are."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=(f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` LIKE '{host}:%'"),
        max_results=1000,
    )
    dead = [run.info.run_id for run in running if not process_alive(run.data.tags[PROCESS_TAG])]
    for run_id in dead:
        client.set_tag(run_id, "shiftwatch.closed_by", "a later stage: the run's process was gone")
        client.set_terminated(run_id, "KILLED")
    return dead
