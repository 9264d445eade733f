"""`shiftwatch serve` + `shiftwatch check --server`: the same report as a local check, over HTTP."""
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from test_check import check, project  # noqa: F401 (project is a fixture)


@pytest.fixture(scope="module")
def server(project):  # noqa: F811
    process = subprocess.Popen(
        [sys.executable, "-m", "shiftwatch", "serve", "--port", "0", "--reference", str(project / "test.npz"),
         "--model", str(project / "resnet18.pt"), "--params", str(project / "params.yaml"),
         "--estimator", str(project / "estimator.json"), "--finetuned", str(project / "finetuned.pt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()  # printed once the model is loaded and the port bound
        assert banner.startswith("shiftwatch serve: http://127.0.0.1:"), process.stderr.read()
        yield banner.split()[2]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_check_on_the_server_gives_the_local_report(project, server, tmp_path):  # noqa: F811
    for batch, expected_exit in (("bright.npy", 0), ("clean.npy", 0)):
        local, remote = tmp_path / f"local_{batch}.json", tmp_path / f"remote_{batch}.json"
        assert check(project, project / batch, "--json", local, "--quiet") == expected_exit
        assert check(project, project / batch, "--json", remote, "--quiet", "--server", server) == expected_exit
        here, there = json.loads(local.read_text()), json.loads(remote.read_text())
        assert there["verdict"] == here["verdict"] and there["alerting"] == here["alerting"]
        for name, test in here["tests"].items():
            assert there["tests"][name]["pvalue"] == pytest.approx(test["pvalue"], rel=1e-9, abs=1e-300)
        assert there["label_shift"]["bbse"] == pytest.approx(here["label_shift"]["bbse"])
        assert there["accuracy"] == pytest.approx(here["accuracy"])
        assert there["page"] == here["page"] and there["harmful"] == here["harmful"]
        assert there["estimate"]["loss_points"] == pytest.approx(here["estimate"]["loss_points"])
        assert there["server"] == server and there["batch"]["path"] == str(project / batch)


def test_the_html_report_works_through_the_server(project, server, tmp_path):  # noqa: F811
    out = tmp_path / "remote.html"
    assert check(project, project / "bright.npy", "--html", out, "--quiet", "--server", server,
                 "--fail-on", "change") == 3
    assert out.read_text().count('src="data:image/png;base64,') == 3


def test_the_server_refuses_a_bad_body_with_one_line(server):
    request = urllib.request.Request(f"{server}/check", data=b"not an array", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"] == "the body is not a .npy array"
    with urllib.request.urlopen(f"{server}/health", timeout=30) as health:
        assert json.load(health)["ok"] is True


def test_no_server_fails_fast_with_one_line(project, capsys):  # noqa: F811
    assert check(project, project / "clean.npy", "--server", "http://127.0.0.1:9") == 2
    error = capsys.readouterr().err
    assert "--server http://127.0.0.1:9: no answer" in error and "shiftwatch serve" in error
    assert error.count("\n") == 1
