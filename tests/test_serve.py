"""`shiftwatch serve` + `shiftwatch check --server`: the same report as a local check, over HTTP."""

import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest
from test_check import blobs, check, input_args

from shiftwatch import ShiftwatchError
from shiftwatch.commands.serve import make_server, request_check

pytestmark = pytest.mark.slow  # starts the check server: `make test-fast` leaves it out

READ_TIMEOUT = 1.0  # seconds: short, so the stalled-client tests take seconds
SINGLE_IMAGE = "a single image; the two-sample tests need at least 2 (and have little power below ~100)"


@pytest.fixture(scope="module")
def server(project):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shiftwatch",
            "serve",
            "--port",
            "0",
            *input_args(project),
            "--read-timeout",
            str(READ_TIMEOUT),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()  # printed once the model is loaded and the port bound
        assert banner.startswith("shiftwatch serve: http://127.0.0.1:"), process.stderr.read()
        yield banner.split()[2]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def modelless(project):
    """An in-process server with no model: a request that reaches the model gets a 500, so a 400
    from it proves the request was refused before the model ran."""
    from shiftwatch.operations.check import load_inputs

    settings, ref, paths = load_inputs(
        project / "test.npz",
        project / "resnet18.pt",
        project / "params.yaml",
        project / "estimator.json",
        project / "finetuned.pt",
    )
    server = make_server(settings, ref, None, paths, read_timeout=READ_TIMEOUT)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def npy(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images)
    return buffer.getvalue()


def post(url: str, body: bytes, header: str | None = "{}", sent: int | None = None) -> socket.socket:
    """POST /check on a raw socket: the headers, then the first `sent` bytes of the body (all of it
    by default); the socket stays open, as a stalled client's does."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=READ_TIMEOUT + 10)
    batch = f"X-Shiftwatch-Batch: {header}\r\n" if header is not None else ""
    head = f"POST /check HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{batch}\r\n"
    sock.sendall(head.encode() + body[:sent])
    return sock


def answer(sock: socket.socket) -> tuple[int | None, dict | None]:
    """(status, JSON body) read to the end of the connection; (None, None) if closed unanswered."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    if not data:
        return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_check_on_the_server_gives_the_local_report(project, server, tmp_path):
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


def test_the_html_report_works_through_the_server(project, server, tmp_path):
    out = tmp_path / "remote.html"
    assert (
        check(project, project / "bright.npy", "--html", out, "--quiet", "--server", server, "--fail-on", "change") == 3
    )
    assert out.read_text().count('src="data:image/png;base64,') == 3


def test_the_server_refuses_a_bad_body_with_one_line(server):
    request = urllib.request.Request(f"{server}/check", data=b"not an array", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"] == "the body is not a .npy array"
    with urllib.request.urlopen(f"{server}/health", timeout=30) as health:
        assert json.load(health)["ok"] is True


def test_no_server_fails_fast_with_one_line(project, capsys):
    assert check(project, project / "clean.npy", "--server", "http://127.0.0.1:9") == 2
    error = capsys.readouterr().err
    assert "--server http://127.0.0.1:9: no answer" in error and "shiftwatch serve" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    "header, words",
    [
        ("[1,2]", "a JSON array, not an object"),
        ("5", "a JSON number, not an object"),
        ('"clean.npy"', "a JSON string, not an object"),
        ("{oops", "not JSON"),
        ("[" * 5000, "not JSON"),
    ],
)
def test_a_batch_header_not_a_json_object_is_a_400_before_the_model_runs(modelless, header, words):
    started = time.perf_counter()
    status, reply = answer(post(modelless, npy(blobs(20, seed=3)), header))
    assert time.perf_counter() - started < 2
    assert status == 400, reply  # the model-less server gives 500 had the check started
    assert (
        reply["error"] == f"the X-Shiftwatch-Batch header is {words}; send a JSON object such as "
        '{"path": "batch.npy"}'
    )


def test_a_bad_batch_header_on_the_real_server_is_a_400_and_it_keeps_serving(project, server):
    for header in ("[1,2]", "5"):
        status, reply = answer(post(server, npy(blobs(20, seed=3)), header))
        assert status == 400 and "\n" not in reply["error"] and "not an object" in reply["error"]
    report, _ = request_check(server, blobs(20, seed=3), {"path": "ok.npy"})
    assert report["batch"] == {"path": "ok.npy", "images": 20}


def test_an_unexpected_failure_is_a_json_500_with_one_line_and_the_server_lives_on(modelless, capsys):
    status, reply = answer(post(modelless, npy(blobs(20, seed=3))))
    assert status == 500
    assert reply["error"].startswith("internal error (") and reply["error"].endswith("see the server's log")
    assert "\n" not in reply["error"] and "Traceback" not in reply["error"]
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == 1 and logged[0].startswith("shiftwatch serve: error: POST /check: ")
    with urllib.request.urlopen(f"{modelless}/health", timeout=5) as health:
        assert json.load(health)["ok"] is True


def handler_threads(settle_to: int | None = None) -> int:
    """The request threads alive in this process (socketserver names them after their target),
    after waiting up to 2 s for them to come down to `settle_to`."""
    deadline = time.monotonic() + 2
    while True:
        alive = sum("process_request_thread" in thread.name for thread in threading.enumerate())
        if settle_to is None or alive <= settle_to or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_stalled_clients_are_cut_off_after_the_read_timeout_and_free_their_threads(modelless):
    assert handler_threads(settle_to=0) == 0
    body = npy(blobs(20, seed=3))
    started = time.perf_counter()
    stalled = [post(modelless, body, sent=100) for _ in range(20)]  # headers, then 100 bytes, then silence
    mid_headers = socket.create_connection(stalled[0].getpeername(), timeout=READ_TIMEOUT + 10)
    mid_headers.sendall(b"POST /check HTTP/1.1\r\nContent-Le")
    time.sleep(0.3)
    assert handler_threads() == 21  # one each, waiting
    for sock in stalled:
        assert answer(sock) == (408, {"error": f"the request stalled: nothing received for {READ_TIMEOUT:g} s"})
    assert answer(mid_headers) == (None, None)  # http.server closes it unanswered
    assert time.perf_counter() - started < READ_TIMEOUT + 1
    assert handler_threads(settle_to=0) == 0


def test_the_read_timeout_option_cuts_off_a_stalled_upload(server):
    started = time.perf_counter()
    status, reply = answer(post(server, npy(blobs(20, seed=3)), sent=100))
    assert status == 408 and "nothing received for 1 s" in reply["error"]
    assert READ_TIMEOUT <= time.perf_counter() - started < READ_TIMEOUT + 3


def test_a_single_image_gets_the_local_checks_message(project, server, tmp_path, capsys):
    status, reply = answer(post(server, npy(blobs(1, seed=3))))
    assert (status, reply) == (400, {"error": f"the request body: {SINGLE_IMAGE}"})
    with pytest.raises(ShiftwatchError) as refused:
        request_check(server, blobs(1, seed=3), {})
    assert str(refused.value) == f"--server {server}: the request body: {SINGLE_IMAGE}"
    one = tmp_path / "one.npy"
    np.save(one, blobs(1, seed=3))
    assert check(project, one) == 2
    assert capsys.readouterr().err == f"shiftwatch check: error: {one}: {SINGLE_IMAGE}\n"


def _stream_check(url: str, images: np.ndarray, stream: str) -> dict:
    """POST /check naming a stream; the report, or the HTTPError for a refused request."""
    request = urllib.request.Request(
        f"{url}/check",
        data=npy(images),
        headers={"X-Shiftwatch-Batch": "{}", "X-Shiftwatch-Stream": stream},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["report"]


def test_with_a_state_dir_each_named_stream_pages_on_its_second_hurt_batch(project, tmp_path):
    """serve --state-dir: the confirmation of `check --confirm-with`, kept by the server per
    stream (the paging estimator calls every batch hurt)."""
    from shiftwatch.operations.check import load_inputs, load_network

    settings, ref, paths = load_inputs(
        project / "test.npz",
        project / "resnet18.pt",
        project / "params.yaml",
        project / "paging_estimator.json",
        project / "finetuned.pt",
    )
    network, _ = load_network(paths["model"])
    ref["finetuned_network"] = load_network(paths["finetuned"])[0]
    streams = tmp_path / "streams"
    streams.mkdir()
    server = make_server(settings, ref, network, paths, read_timeout=READ_TIMEOUT, state_dir=streams)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, images = f"http://127.0.0.1:{server.server_port}", np.load(project / "clean.npy")
    try:
        first, second = (_stream_check(url, images, "camera-1") for _ in range(2))
        other = _stream_check(url, images, "camera-2")
        with pytest.raises(urllib.error.HTTPError) as refused:
            _stream_check(url, images, "../outside")
    finally:
        server.shutdown()
        server.server_close()
    assert first["harmful"] and first["page"] == "ok" and first["confirmation"]["previous_harmful"] is None
    assert second["page"] == "PAGE" and second["confirmation"]["previous_harmful"] is True
    assert other["page"] == "ok"  # streams are confirmed apart
    assert refused.value.code == 400 and "name a stream" in json.loads(refused.value.read())["error"]
    assert sorted(p.name for p in streams.iterdir()) == ["camera-1.json", "camera-2.json"]
    assert json.loads((streams / "camera-1.json").read_text())["page"] == "PAGE"


def test_a_stream_header_without_a_state_dir_is_a_400_before_the_model_runs(modelless):
    status, body = answer(
        post(modelless, npy(np.zeros((4, 28, 28), np.float32)), header="{}\r\nX-Shiftwatch-Stream: a")
    )
    assert status == 400 and "start it with --state-dir" in body["error"]
