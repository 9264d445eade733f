"""A team's MLflow tracking server: PostgreSQL backend store, proxied artifacts, 127.0.0.1 only.

`make server` (python tools/team_server.py [--folder .team-server] [--port 5050]) creates or
reuses a PostgreSQL cluster in FOLDER/postgres (PostgreSQL 15's initdb/pg_ctl; run as the
`postgres` user when started as root, which initdb requires), starts it on a Unix socket in
FOLDER, starts `mlflow server` with that database as backend store and FOLDER/artifacts as
proxied artifact storage (clients upload through the server: no shared disk needed), prints
the MLFLOW_TRACKING_URI to export, and stops both on Ctrl-C, SIGTERM or SIGHUP.

A wrapper killed without cleanup (SIGKILL, OOM killer) leaves PostgreSQL and `mlflow server`
running: the next start finds them through FOLDER/postgres/postmaster.pid and FOLDER/mlflow.pid,
stops them and starts afresh; a pid file whose process is gone is ignored. Any failure is one
line on stderr and exit status 1. tests/test_team_server.py uses the same functions with a
throw-away folder, and injects each of these faults into the real wrapper.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE, USER = "mlflow", "shiftwatch"
STOP_TIMEOUT_S = 20  # pg_ctl stop, or MLflow's processes after SIGTERM (its job consumers take ~5 s)
MLFLOW_PIDFILE = "mlflow.pid"  # the process group of `mlflow server`, found again after a SIGKILL


class Stop(Exception):
    """A signal asked the wrapper to stop (raised by the handler, so `finally` blocks clean up)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- processes, read from /proc (Linux) --------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True while pid runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    """The command line on one line (arguments may hold newlines), "" if unreadable or gone."""
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        return ""


def group(pgid: int) -> list[int]:
    """The live processes of process group pgid."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if (fields := _stat(pid)) and fields[0] not in ("Z", "X") and int(fields[2]) == pgid]


def port_holder(port: int) -> int | None:
    """The pid listening on TCP port (None when /proc does not show it to this user)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = [row.split() for row in Path(table).read_text().splitlines()[1:]]
        except OSError:
            continue
        inodes |= {f"socket:[{row[9]}]" for row in rows if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port}
    for pid in sorted(int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()):
        try:
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
        except OSError:
            continue
    return None


def check_port_free(port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
            return
        except OSError:
            pass
    pid = port_holder(port)
    if pid is None:
        raise SystemExit(f"port {port} is in use (`ss -ltnp 'sport = :{port}'` names who): stop it or pass --port")
    raise SystemExit(f"port {port} is in use by pid {pid} ({cmdline(pid)[:80]}): `kill {pid}` or pass --port")


def stop_group(pgid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a process group; SIGKILL whatever is left after timeout_s."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while group(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group(pgid):
            return


# --- PostgreSQL ------------------------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _pg(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_as_postgres([str(PG_BIN / tool), *args]), capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_command(data: Path) -> str:
    return " ".join(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]))


def clear_earlier_cluster(data: Path) -> None:
    """pg_ctl detaches PostgreSQL, so a wrapper killed by SIGKILL leaves it running: stop it (this
    start picks a new port). A postmaster.pid whose process is gone, or whose pid now belongs to a
    program that is not PostgreSQL (after a reboot), is removed: postgres itself may refuse it."""
    pid = _postmaster_pid(data)
    if pid is None:
        return
    command = cmdline(pid)
    if not alive(pid) or (command and "postgres" not in command):
        (data / "postmaster.pid").unlink(missing_ok=True)
    elif (
        f"-D {data}" in command
        and _pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop").returncode != 0
    ):
        raise SystemExit(
            f"PostgreSQL of an earlier run (pid {pid}) still runs in {data} and did not stop "
            f"within {STOP_TIMEOUT_S} s: run `{_stop_command(data)}`, then start again"
        )
    # else: another cluster's postgres with this pid; pg_ctl start below says what it makes of it.


def start_postgres(folder: Path, port: int) -> str:
    """Start (creating if needed) a cluster in folder/postgres listening on a Unix socket in
    `folder` and on 127.0.0.1:port; returns the SQLAlchemy URI of its `mlflow` database."""
    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"{PG_BIN}/initdb not found: apt-get install postgresql")
    data, log = folder / "postgres", folder / "postgres.log"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    if not (data / "PG_VERSION").exists():
        created = _pg("initdb", "-D", str(data), "-U", USER, "-A", "trust", "--no-sync")
        if created.returncode != 0:
            raise SystemExit(f"initdb failed in {data}: {_last_line(created.stderr)}")
    clear_earlier_cluster(data)
    started = _pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-o", f"-k {folder} -p {port} -h 127.0.0.1", "start")
    if started.returncode != 0:
        reason = _last_line(log.read_text() if log.exists() else started.stderr)
        raise SystemExit(f"PostgreSQL did not start in {data}: {reason} (see {log})")
    created = _pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE)
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise SystemExit(f"createdb failed: {_last_line(created.stderr)}")
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"  # SQLAlchemy 2.1 defaults to psycopg 3


def stop_postgres(folder: Path) -> None:
    data = folder / "postgres"
    stopped = _pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop")
    pid = _postmaster_pid(data)
    if stopped.returncode != 0 and pid is not None and alive(pid):
        raise SystemExit(f"PostgreSQL (pid {pid}) did not stop within {STOP_TIMEOUT_S} s: run `{_stop_command(data)}`")


# --- MLflow ----------------------------------------------------------------------------------


def stop_earlier_mlflow(folder: Path) -> None:
    """`mlflow server` runs in its own process group, which survives a wrapper killed by SIGKILL:
    stop that group if FOLDER/mlflow.pid names one that still runs MLflow."""
    pidfile = folder / MLFLOW_PIDFILE
    try:
        pgid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    if any("mlflow" in cmdline(pid) for pid in group(pgid)):
        stop_group(pgid)
    pidfile.unlink(missing_ok=True)


def stop_mlflow(server: subprocess.Popen, folder: Path) -> None:
    """Stop the whole group: SIGTERM to `mlflow server` alone would orphan uvicorn and its job runner."""
    stop_group(server.pid)
    server.wait()
    (folder / MLFLOW_PIDFILE).unlink(missing_ok=True)


def start_mlflow(backend_uri: str, folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port, artifacts in folder/artifacts, log in
    folder/mlflow-server.log; returns once GET /health answers, or stops it and raises."""
    artifacts, log = folder / "artifacts", folder / "mlflow-server.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    (folder / MLFLOW_PIDFILE).write_text(f"{server.pid}\n")
    try:
        _wait_healthy(server, port, log)
    except BaseException:
        stop_mlflow(server, folder)
        raise
    return server


def _wait_healthy(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with {server.returncode} while starting; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer on port {port} within {timeout_s:.0f} s; see {log}")


# --- the wrapper -----------------------------------------------------------------------------


def _raise_stop(signum: int, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def serve(folder: Path, port: int) -> None:
    """Start PostgreSQL then MLflow; stop both when MLflow exits, a start fails or a signal arrives."""
    stop_earlier_mlflow(folder)
    check_port_free(port)
    clear_earlier_cluster(folder / "postgres")  # before `try`: a cluster that would not stop is the user's to stop
    server = None
    try:
        backend = start_postgres(folder, free_port())
        server = start_mlflow(backend, folder, port)
        print(
            f"MLflow server on PostgreSQL is up. In each shell that runs the pipeline:\n"
            f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}\nCtrl-C or SIGTERM stops it.",
            flush=True,
        )
        server.wait()
        raise SystemExit(f"mlflow server exited with {server.returncode}; see {folder / 'mlflow-server.log'}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM must not cut the cleanup short
        if server is not None:
            stop_mlflow(server, folder)
        stop_postgres(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(".team-server"))
    parser.add_argument("--port", type=int, default=5050, help="the MLflow server's port")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    try:
        serve(args.folder.resolve(), args.port)
    except Stop as stop:
        print(f"{stop}: MLflow server and PostgreSQL stopped.", flush=True)


if __name__ == "__main__":
    main()
