"""tools/exp_table.py (`make exp`): the params and metrics that differ between experiments, one
row each, no dependency hashes. Real `dvc exp run` on a two-stage project in a temp folder."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

TOOL = REPO / "tools" / "exp_table.py"

# make.py writes data.txt from params; score.py reads it: an experiment changes data.txt's hash,
# which `dvc exp show --only-changed` shows as a column of its own.
SCRIPTS = {
    "make.py": "import yaml\nopen('data.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['scale']))\n",
    "score.py": "import json\njson.dump({'score': 2 * int(open('data.txt').read()), 'constant': 7},"
    " open('metrics.json', 'w'))\n",
}
DVC_YAML = """stages:
  make:
    cmd: python make.py
    deps: [make.py]
    params: [scale]
    outs: [data.txt]
  score:
    cmd: python score.py
    deps: [score.py, data.txt]
    params: [label]
    metrics: [metrics.json: {cache: false}]
"""


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="1",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """A baseline (scale 1) and one experiment that triples it."""
    repo = tmp_path_factory.mktemp("exp")
    (repo / "params.yaml").write_text("scale: 1\nlabel: a\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    for name, source in SCRIPTS.items():
        (repo / name).write_text(source)
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "repro", "-q")
    _run(repo, "git", "add", ".")
    _run(repo, "git", "commit", "-q", "-m", "baseline")
    _run(repo, "dvc", "exp", "run", "-q", "-S", "scale=3", "-n", "tripled")
    return repo


@pytest.mark.slow
def test_one_row_per_changed_param_and_metric_and_no_dependency_hashes(experiments):
    # given a baseline and an experiment that changed one param, one metric and one dep's hash
    dvc_table = _run(experiments, "dvc", "exp", "show", "--only-changed", "--md", "--no-pager").stdout
    assert "data.txt" in dvc_table  # what DVC's own table carries
    # when the sideways table is printed
    table = _run(experiments, sys.executable, str(TOOL)).stdout
    # then: a column per experiment (workspace, baseline, experiment), a row for scale and score only
    lines = table.splitlines()
    assert re.fullmatch(r"\|\s+\|\s+\| workspace\s+\| \w+\s+\| tripled\s+\|", lines[0]), lines[0]
    rows = {cells[1]: cells for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])}
    # (`dvc exp run` leaves the experiment's results in the workspace)
    assert rows == {"scale": ["param", "scale", "3", "1", "3"], "score": ["metric", "score", "6", "2", "6"]}
    assert not re.search(r"[0-9a-f]{32}", table) and "data.txt" not in table
    assert max(map(len, lines)) < len(dvc_table.splitlines()[0])


@pytest.mark.slow
def test_an_unknown_baseline_is_one_line_and_exit_2(experiments):
    result = subprocess.run(
        [sys.executable, str(TOOL), "--rev", "no-such-commit"],
        cwd=experiments,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "no-such-commit" in result.stderr


def test_nothing_changed_says_so_instead_of_an_empty_table(monkeypatch, capsys):
    # given two experiments whose params and metrics are all equal
    spec = importlib.util.spec_from_file_location("exp_table", TOOL)
    exp_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp_table)
    rows = [{"Experiment": "", "rev": "workspace", "seed": 1}, {"Experiment": "", "rev": "main", "seed": 1}]
    monkeypatch.setattr(exp_table, "experiment_rows", lambda *args: (rows, {"params": ["seed"], "metrics": []}))
    # when
    assert exp_table.main([]) == 0
    # then
    assert capsys.readouterr().out == (
        "no param or metric differs between workspace, main (run `dvc exp run -S key=value` first)\n"
    )
