"""`dvc plots show` draws its Vega plots without network. DVC's own page loads Vega from a CDN,
so offline its plots are blank; tools/plots_template.py (`make plots-template`) writes a page
template with the pinned npm packages inlined, and the committed template (.dvc/plots_page.html)
says what to run when Vega did not load. Rendered by real dvc from a temp copy of the committed
plot data, opened in headless Chromium with the network shut."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

TOOL = REPO / "tools" / "plots_template.py"
NODE_MODULES = REPO / "node_modules"
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium not installed: apt-get install chromium (.ci/run does)"
)
needs_npm_packages = pytest.mark.skipif(
    not (NODE_MODULES / "vega-embed").is_dir(), reason="pinned Vega packages not installed: npm ci (.ci/run does)"
)

# Waits until every plot has a canvas with something painted on it (or 8 s of page time), then
# writes each plot's canvas size and painted (not white, not transparent) pixels onto <body>.
PROBE = """<script>
const probeStart = Date.now();
function probe() {
  const plots = PLOT_IDS.map(id => {
    const canvas = document.getElementById(id)?.querySelector("canvas");
    if (!canvas || !canvas.width || !canvas.height) return {id, width: 0, height: 0, painted: 0};
    const rgba = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 0; i < rgba.length; i += 4)
      if (rgba[i + 3] > 0 && Math.min(rgba[i], rgba[i + 1], rgba[i + 2]) < 240) painted++;
    return {id, width: canvas.width, height: canvas.height, painted};
  });
  if (plots.every(plot => plot.painted > 0) || Date.now() - probeStart > 8000)
    document.body.setAttribute("data-plots", JSON.stringify(plots));
  else setTimeout(probe, 100);
}
window.addEventListener("load", () => setTimeout(probe, 100));
</script>"""


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(dvc), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def plot_repo(tmp_path) -> Path:
    """The pipeline definition, the committed metrics and DVC config in a temp folder."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "metrics", repo / "metrics")
    for name in ("config", "plots_page.html"):
        shutil.copy(REPO / ".dvc" / name, repo / ".dvc" / name)
    return repo


def vega_plot_count(repo: Path) -> int:
    """Top-level plot definitions in dvc.yaml that are data files (Vega), not image folders."""
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    return sum(1 for plot in plots for name in plot if not (repo / name).is_dir())


def show_plots(repo: Path) -> str:
    """`dvc plots show` with the repository's configured template; the page's HTML."""
    result = _dvc(repo, "plots", "show", "--out", "plots_out")
    assert result.returncode == 0, result.stderr
    return (repo / "plots_out" / "index.html").read_text(encoding="utf-8")


def open_offline(page: str, folder: Path) -> tuple[list[dict], str, str]:
    """Open `page` in headless Chromium with no network: (each Vega plot's canvas size and
    painted pixels, the DOM after the plots ran, the browser's console log)."""
    plot_ids = re.findall(r"vegaEmbed\('#([^']+)'", page)
    head, tail = page.rsplit("</body>", 1)  # the last one: the inlined JS contains "</body>" too
    probe_page = folder / "probe.html"
    probe_page.write_text(head + PROBE.replace("PLOT_IDS", json.dumps(plot_ids)) + "</body>" + tail, encoding="utf-8")
    browser = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={folder / 'profile'}",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            "--dump-dom",
            probe_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'data-plots="([^"]*)"', browser.stdout)
    assert found, f"the probe never reported; console:\n{browser.stderr[-2000:]}"
    console = "\n".join(line for line in browser.stderr.splitlines() if ":CONSOLE" in line)
    return json.loads(found.group(1).replace("&quot;", '"')), browser.stdout, console


@pytest.mark.slow
@needs_chromium
@needs_npm_packages
def test_with_the_offline_template_every_vega_plot_draws_without_network(plot_repo, tmp_path):
    # given the template `make plots-template` writes, configured the way it configures it
    written = subprocess.run(
        [sys.executable, str(TOOL), "--node-modules", str(NODE_MODULES)],
        cwd=plot_repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert _dvc(plot_repo, "config", "--local", "plots.html_template", "plots_page_offline.html").returncode == 0
    # when dvc renders the page and a browser with no network opens it
    page = show_plots(plot_repo)
    plots, _, console = open_offline(page, tmp_path)
    # then the page asks nothing of the network, and every Vega plot painted its canvas
    assert "cdn.jsdelivr.net" not in page
    assert len(plots) == vega_plot_count(plot_repo) > 0
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["painted"] > 0.01 * plot["width"] * plot["height"], plot
    assert "Uncaught" not in console and "is not defined" not in console, console


@pytest.mark.slow
@needs_chromium
def test_without_the_offline_template_the_page_says_what_to_run(plot_repo, tmp_path):
    # given a fresh clone: the committed template only, which takes Vega from the CDN
    # when dvc renders the page and a browser with no network opens it
    page = show_plots(plot_repo)
    plots, dom, console = open_offline(page, tmp_path)
    # then no plot draws (what the offline test's checks would catch), and the page says why
    assert len(plots) == vega_plot_count(plot_repo) > 0
    assert all(plot["painted"] == 0 for plot in plots), plots
    assert "vegaEmbed is not defined" in console
    assert 'id="vega-missing"' in dom and "make plots-template" in dom


def _tool():
    spec = importlib.util.spec_from_file_location("plots_template", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_names_a_missing_package_and_how_to_install_it(tmp_path, capsys):
    # given no npm packages installed
    # when the template is written
    code = _tool().main(["--node-modules", str(tmp_path / "node_modules"), "--out", str(tmp_path / "page.html")])
    # then one line: which file is missing and the command that installs it; no template written
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "vega.min.js not found" in err and "npm ci" in err
    assert not (tmp_path / "page.html").exists()


def test_inlined_javascript_cannot_end_its_script_element_early():
    tool = _tool()
    script = tool.inline_script('var tag = "</script>";\n//# sourceMappingURL=x.map', "demo")
    assert script.count("</script") == 1 and script.rstrip().endswith("</script>")
    assert "sourceMappingURL" not in script
    with pytest.raises(tool.TemplateError, match="<!--"):
        tool.inline_script('var c = "<!--";', "demo")
