"""MLflow's compare view of two pipeline runs, opened as a user opens it: `mlflow ui` on a
temporary store and headless Chromium, driven through chromedriver's WebDriver HTTP API.

The store holds two parent runs logged by the real tracking code from the repository's
dvc.yaml and committed metrics files: the baseline, and a brightness experiment whose
shift-dependent numbers moved (scaled here: this checks the view, not the pipeline)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import REPO

from shiftwatch.core.params import parse_params
from shiftwatch.tracking.dvc import COMPARE_FIRST, headline_plots, metrics_files
from shiftwatch.tracking.runs import stage_run
from shiftwatch.tracking.store import EXPERIMENT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(  # a server and a browser: not in `make test-fast`
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)",
    ),
]

SHIFTED = ("detect", "evaluate", "monitor", "mitigate")  # the stages a shift experiment reruns
BRIGHTER = 0.1  # the experiment's shift.brightness, above the baseline's


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scaled(tree, factor: float, shifted: bool = False):
    """The numbers under a shifted set (b_covariate, b_shift...) times `factor`; flags and counts kept."""
    if isinstance(tree, dict):
        return {k: _scaled(v, factor, shifted or k.startswith(("b_covariate", "b_shift"))) for k, v in tree.items()}
    return tree * factor if shifted and isinstance(tree, float) else tree


def _log_pipeline_run(root: Path, params, experiment: str) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("DVC_EXP_NAME", experiment)
        for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_BASELINE_REV"):
            env.delenv(var, raising=False)
        with stage_run("evaluate", params):  # the parent takes every headline number and plot on disk
            pass


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for path in [*metrics_files(REPO), *headline_plots(REPO)]:
        (root / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.relative_to(REPO))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    _log_pipeline_run(root, parse_params(raw), "workspace")
    for stage in SHIFTED:
        path = root / "metrics" / f"{stage}.json"
        path.write_text(json.dumps(_scaled(json.loads(path.read_text()), 0.9)))
    raw["shift"]["brightness"] += BRIGHTER
    _log_pipeline_run(root, parse_params(raw), "brighter")
    return root


@pytest.fixture(scope="module")
def ui(store):
    """`mlflow ui` (as `make ui` starts it) on the store, on a free port."""
    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: requests.get(f"{url}/health", timeout=2).ok, "mlflow ui did not start", 90)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # it leads its group: uvicorn and its workers too
        server.wait(timeout=30)


def _wait_for(condition, message: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = condition()
        except (requests.RequestException, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(message)


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver endpoints (what Selenium sends)."""

    def __init__(self, driver_url: str, profile: Path):
        options = {
            "binary": shutil.which("chromium"),
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                f"--user-data-dir={profile}",
            ],
        }
        answer = requests.post(
            f"{driver_url}/session",
            timeout=120,
            json={"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}},
        ).json()
        self.session = f"{driver_url}/session/{answer['value']['sessionId']}"

    def open(self, url: str) -> None:
        requests.post(f"{self.session}/url", json={"url": url}, timeout=120).raise_for_status()

    def run(self, script: str, *args):
        answer = requests.post(
            f"{self.session}/execute/sync", json={"script": script, "args": list(args)}, timeout=60
        ).json()
        if isinstance(answer["value"], dict) and "error" in answer["value"]:
            raise AssertionError(f"script failed: {answer['value']['message']}")
        return answer["value"]

    def close(self) -> None:
        requests.delete(self.session, timeout=60)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    port = _free_port()
    driver = subprocess.Popen(
        [shutil.which("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: requests.get(f"{url}/status", timeout=2).ok, "chromedriver did not start", 30)
        opened = Browser(url, tmp_path_factory.mktemp("profile"))
        yield opened
        opened.close()
    finally:
        driver.terminate()
        driver.wait(timeout=30)


@pytest.fixture(scope="module")
def compare_page(store, ui, browser):
    """The compare view of the two parents, as the runs table's Compare button opens it."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], "tags.`shiftwatch.role` = 'pipeline'")
    assert len(parents) == 2
    runs = json.dumps([run.info.run_id for run in parents])
    browser.open(f"{ui}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment.experiment_id])}")
    return browser, {run.data.tags["dvc.exp_name"]: run for run in parents}


AXES = "return Array.from(document.querySelectorAll('.pcp-plot .y-axis .axis-title')).map(e => e.textContent)"


def test_the_parallel_coordinates_plot_opens_on_accuracy_on_b_shift_against_the_changed_param(compare_page):
    browser, parents = compare_page
    axes = _wait_for(lambda: browser.run(AXES), "the parallel-coordinates plot did not draw")
    assert axes == ["shift.brightness", COMPARE_FIRST]  # the param that differs, the metric that moved
    values = {name: run.data.metrics[COMPARE_FIRST] for name, run in parents.items()}
    assert values["brighter"] < values["workspace"]  # not a constant axis (it was train.final_loss)


# A section of the compare view (Parameters, Metrics, Artifacts) by its title: its content.
SECTION = """
const section = title => Array.from(document.querySelectorAll('.du-bois-light-collapse-item'))
  .find(item => item.querySelector('.du-bois-light-collapse-header').textContent === title)
  .querySelector('.du-bois-light-collapse-content-box');
"""
# The rows of a compare table with "Show diff only" on. Parameters is a plain table; Metrics a
# virtualized grid (names in one, values in the next) whose row `wanted` is scrolled into view.
DIFF_ROWS = (
    SECTION
    + """
const [title, wanted] = arguments;
const box = section(title);
const toggle = box.querySelector('button[role="switch"]');
if (toggle.getAttribute('aria-checked') !== 'true') toggle.click();
const grids = box.querySelectorAll('.ReactVirtualized__Grid');
if (!grids.length) return Array.from(box.querySelectorAll('tr')).map(row => row.firstChild.textContent);
const names = Array.from(grids[0].querySelectorAll('[style*="top"]'));
const row = names.find(e => e.textContent === wanted);
if (!row) return null;
grids[0].scrollTop = row.offsetTop;
const view = grids[0].getBoundingClientRect(), at = row.getBoundingClientRect();
const cells = Array.from(grids[1].querySelectorAll('[style*="top"]')).filter(e => e.style.top === row.style.top);
return {visible: at.top >= view.top && at.bottom <= view.bottom, values: cells.map(e => e.textContent),
        rows: names.map(e => e.textContent)};
"""
)


def test_the_headline_rows_show_both_runs_values(compare_page):
    browser, parents = compare_page
    _wait_for(lambda: browser.run(AXES), "the compare view did not load")
    params = _wait_for(lambda: browser.run(DIFF_ROWS, "Parameters", ""), "no parameters table")
    assert params == ["shift.brightness"]  # the one param that differs
    metrics = _wait_for(lambda: browser.run(DIFF_ROWS, "Metrics", COMPARE_FIRST), f"no {COMPARE_FIRST} row")
    assert metrics["visible"]
    shown = sorted(float(value) for value in metrics["values"])  # MLflow rounds to 3 decimals
    assert shown == pytest.approx(sorted(run.data.metrics[COMPARE_FIRST] for run in parents.values()), abs=5e-4)
    assert "train.final_loss" not in metrics["rows"]  # equal in both: hidden by "Show diff only"
    assert "detect.b_shift.ks_statistic" in metrics["rows"]


def test_the_headline_plots_are_common_artifacts_of_the_parents(compare_page):
    """The compare view lists the files both runs have and shows them side by side."""
    browser, _ = compare_page
    _wait_for(lambda: browser.run(AXES), "the compare view did not load")
    listed = _wait_for(lambda: browser.run(SECTION + "return section('Artifacts').textContent"), "no artifacts")
    assert "No common artifacts" not in listed
    assert all(path.name in listed for path in headline_plots(REPO)), listed
