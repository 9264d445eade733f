"""A team's MLflow tracking server: PostgreSQL backend store, proxied artifacts, 127.0.0.1 only.

`make server` (python tools/team_server.py [--folder .team-server] [--port 5050]) creates or
reuses a PostgreSQL cluster in FOLDER/postgres (PostgreSQL 15's initdb/pg_ctl; run as the
`postgres` user when started as root, which initdb requires), starts it on a Unix socket in
FOLDER, starts `mlflow server` with that database as backend store and FOLDER/artifacts as
proxied artifact storage (clients upload through the server: no shared disk needed), prints
the MLFLOW_TRACKING_URI to export, and stops both on Ctrl-C. tests/test_team_server.py uses
the same functions with a throw-away folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE, USER = "mlflow", "shiftwatch"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


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
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                                     "--no-sync"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                 f"-k {folder} -p {port} -h 127.0.0.1", "start"]), check=True, capture_output=True)
    created = subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p",
                                           str(port), "-U", USER, DATABASE]), capture_output=True, text=True)
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise SystemExit(f"createdb failed: {created.stderr.strip()}")
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{DATABASE}"  # SQLAlchemy 2.1 defaults to psycopg 3


def stop_postgres(folder: Path) -> None:
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "postgres"), "-m", "fast", "-w",
                                 "stop"]), capture_output=True)


def start_mlflow(backend_uri: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port; returns once GET /health answers (or raises)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", backend_uri,
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "2"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise SystemExit(f"mlflow server did not answer on port {port} within 180 s; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(".team-server"))
    parser.add_argument("--port", type=int, default=5050, help="the MLflow server's port")
    args = parser.parse_args()
    folder = args.folder.resolve()
    backend = start_postgres(folder, free_port())
    server = None
    try:
        server = start_mlflow(backend, folder / "artifacts", args.port, folder / "mlflow-server.log")
        print(f"MLflow server on PostgreSQL is up. In each shell that runs the pipeline:\n"
              f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{args.port}\nCtrl-C stops it.", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        stop_postgres(folder)


if __name__ == "__main__":
    main()
