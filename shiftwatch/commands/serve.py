"""shiftwatch serve: keep the model and the reference loaded, answer checks over HTTP.

A cold `shiftwatch check` spends most of its time importing torch and loading the model.
`shiftwatch serve` does that once and then answers `shiftwatch check BATCH --server URL` (or
any HTTP client) in the time of the forward pass and the detectors. It runs the very same
`check_images` as a local check, so the report and the verdict are the same.

    shiftwatch serve [--port 8765]        # binds 127.0.0.1 only
    shiftwatch check batch.npy --server http://127.0.0.1:8765

Endpoints: GET /health -> {"ok": true, "model", "reference", "images"}; POST /check with a
.npy body (images as `check` reads an array; the client sends float32 (N, 28, 28) in [0, 1]) and
the batch's description as a JSON object in the X-Shiftwatch-Batch header -> {"report": ...,
"views": ... (with ?views=1, for the HTML report)}. Checks are answered one at a time (the model
uses every core).

Confirmed pages, as `check --confirm-with` gives them, for clients that keep no state: start with
`--state-dir DIR` and name the stream in an X-Shiftwatch-Stream header (letters, digits, . _ -).
The server keeps each stream's last report in DIR/<stream>.json and pages only on the second
hurt batch in a row; the answer's "confirmation" says what the previous batch was. A restart
keeps the files, so a stream goes on where it was.

Errors, each one line in {"error": ...}: 400 for a bad request, found before the model runs (the
body is validated by batch.as_images, the rules and messages of a local check); 408 when the
client sends nothing for --read-timeout seconds mid-request (its thread is freed); 500 for
anything unexpected (one line with file:line goes to stderr, no traceback to the client).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from shiftwatch import ShiftwatchError

HELP = "keep the model loaded and answer `check --server` requests on 127.0.0.1"
MAX_BODY = 2 * 1024**3  # 2 GiB of float32 images: ~680,000 images per request
READ_TIMEOUT = 30.0  # seconds a client may stay silent mid-request before its thread is freed
BATCH_HEADER = "X-Shiftwatch-Batch"
STREAM_HEADER = "X-Shiftwatch-Stream"
STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (default 8765; 0 = any free)")
    parser.add_argument("--reference", type=Path, default=None, help="as for check")
    parser.add_argument("--model", default=None, help="as for check (a path or models:/NAME@ALIAS)")
    parser.add_argument("--params", type=Path, default=None, help="as for check")
    parser.add_argument("--estimator", type=Path, default=None, help="as for check")
    parser.add_argument("--finetuned", type=Path, default=None, help="as for check")
    parser.add_argument(
        "--read-timeout",
        type=_seconds,
        default=READ_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection whose client sends nothing for this long mid-request "
        f"(default {READ_TIMEOUT:g}); stalled uploads would otherwise hold a thread each",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"keep each stream's last report here (a request names its stream in {STREAM_HEADER}) and "
        "page only on the second hurt batch in a row, as check --confirm-with does",
    )


def run(args: argparse.Namespace) -> int:
    from shiftwatch.operations.check import load_inputs, load_network

    try:
        settings, ref, paths = load_inputs(args.reference, args.model, args.params, args.estimator, args.finetuned)
        network, _ = load_network(paths["model"])
        ref["finetuned_network"] = load_network(paths["finetuned"])[0]
        if args.state_dir is not None:
            args.state_dir.mkdir(parents=True, exist_ok=True)
        server = make_server(settings, ref, network, paths, args.port, args.read_timeout, args.state_dir)
    except (ShiftwatchError, OSError) as err:
        print(f"shiftwatch serve: error: {err}", file=sys.stderr)
        return 2
    print(
        f"shiftwatch serve: http://127.0.0.1:{server.server_port} (model {paths['model']}, "
        f"reference {paths['reference']}); Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def make_server(
    settings,
    ref: dict,
    network,
    paths: dict,
    port: int = 0,
    read_timeout: float = READ_TIMEOUT,
    state_dir: Path | None = None,
) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any free port) answering checks with these loaded inputs;
    call serve_forever() on it. With `state_dir`, streams named in requests are confirmed."""
    return _Server(("127.0.0.1", port), _handler(settings, ref, network, paths, read_timeout, state_dir))


class _Server(ThreadingHTTPServer):
    # listen()'s backlog: at the default 5, a burst of clients had their SYNs dropped and each
    # waited a 1 s retransmission before being accepted
    request_queue_size = 64


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: give a positive number of seconds")
    return value


def _handler(settings, ref: dict, network, paths: dict, read_timeout: float, state_dir: Path | None = None):
    from shiftwatch.core.io import write_json
    from shiftwatch.operations.check import check_images
    from shiftwatch.operations.page import confirm, read_previous

    one_at_a_time = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # socketserver sets it on the socket: every read and write is bounded

        def do_GET(self):
            if urlparse(self.path).path != "/health":
                return self._reply(404, {"error": "GET /health or POST /check"})
            return self._reply(
                200,
                {
                    "ok": True,
                    "model": str(paths["model"]),
                    "reference": str(paths["reference"]),
                    "images": len(ref["labels"]),
                },
            )

        def do_POST(self):
            url = urlparse(self.path)
            if url.path != "/check":
                return self._reply(404, {"error": "POST /check"})
            try:
                self._reply(200, self._check(want_views=parse_qs(url.query).get("views") == ["1"]))
            except ShiftwatchError as err:
                self._reply(400, {"error": str(err)})
            except _Stalled:
                self._reply(408, {"error": f"the request stalled: nothing received for {read_timeout:g} s"})
            except Exception as err:  # a bug, not the client's: one line each side, no traceback sent
                from shiftwatch.tracking.store import one_line

                print(
                    f"shiftwatch serve: error: POST /check: {one_line(err)} at {_where(err)}",
                    file=sys.stderr,
                    flush=True,
                )
                self._reply(500, {"error": f"internal error ({one_line(err)}); see the server's log"})

        def _check(self, want_views: bool) -> dict:
            """The whole request validated (ShiftwatchError) before the model runs, then the check."""
            body = self._body()  # read whole before any reply: the client may still be sending
            batch = _batch_info(self.headers.get(BATCH_HEADER))
            images = _images(body)
            last = _stream_file(self.headers.get(STREAM_HEADER), state_dir)
            with one_at_a_time:  # also one reader and writer of a stream's last report at a time
                previous = None if last is None else read_previous(last)
                report, views = check_images(images, batch, settings, ref, network, paths)
                if last is not None:
                    confirm(report, previous, last)
                    write_json(last, report)
            answer = {"report": report}
            if want_views:
                answer["views"] = {k: np.asarray(v).tolist() for k, v in vars(views).items()}
            return answer

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length", "0")
            size = int(length) if length.isdigit() else -1
            if not 0 < size <= MAX_BODY:
                raise ShiftwatchError(
                    f"request body of Content-Length {length}; send one .npy array of images (at most {MAX_BODY} bytes)"
                )
            try:
                body = self.rfile.read(size)
            except TimeoutError:  # the handler's timeout: a stalled upload frees its thread
                raise _Stalled from None
            if len(body) < size:
                raise ShiftwatchError(f"the body ended after {len(body)} of {size} bytes")
            return body

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client left or stalled: nobody to tell, and no traceback to log
                self.close_connection = True

        def log_message(self, format, *args):
            pass  # one line per request on stderr would drown the operator's logs

    return Handler


def _images(body: bytes) -> np.ndarray:
    """The .npy body as the check's images, by the rules and messages of a local check."""
    from shiftwatch.data.batch import as_images

    try:
        raw = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception:
        raise ShiftwatchError("the body is not a .npy array") from None
    return as_images(raw, "the request body")


def _stream_file(header: str | None, state_dir: Path | None) -> Path | None:
    """Where the named stream's last report is kept (None: no stream named, nothing confirmed)."""
    if header is None:
        return None
    if state_dir is None:
        raise ShiftwatchError(f"{STREAM_HEADER}: this server keeps no streams; start it with --state-dir DIR")
    if not STREAM_NAME.fullmatch(header):
        raise ShiftwatchError(f"{STREAM_HEADER} {header!r}: name a stream with 1-64 letters, digits, '.', '_' or '-'")
    return state_dir / f"{header}.json"


def _batch_info(header: str | None) -> dict:
    """The batch's description from its header: a JSON object (the report's "batch")."""
    fix = 'send a JSON object such as {"path": "batch.npy"}'
    try:
        info = json.loads(header or "{}")
    except (ValueError, RecursionError):  # RecursionError: arrays nested past Python's limit
        raise ShiftwatchError(f"the {BATCH_HEADER} header is not JSON; {fix}") from None
    if not isinstance(info, dict):
        kind = _JSON_KINDS.get(type(info), "value")
        raise ShiftwatchError(f"the {BATCH_HEADER} header is a JSON {kind}, not an object; {fix}")
    return info


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class _Stalled(Exception):
    """The client sent nothing for the read timeout in the middle of its request."""


def _where(err: Exception) -> str:
    """file:line of the innermost frame: enough to find the bug without a traceback."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def request_check(
    url: str, images: np.ndarray, batch_info: dict, views: bool = False, timeout: float = 600
) -> tuple[dict, dict | None]:
    """The client side: (report, views as lists or None) from a `shiftwatch serve` at `url`."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images, dtype=np.float32))
    request = Request(
        f"{url.rstrip('/')}/check{'?views=1' if views else ''}",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/octet-stream", BATCH_HEADER: json.dumps(batch_info)},
        method="POST",
    )
    try:
        with urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except HTTPError as err:
        detail = json.loads(err.read() or b"{}").get("error", err.reason)
        raise ShiftwatchError(f"--server {url}: {detail}") from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ShiftwatchError(
            f"--server {url}: no answer ({reason}); start one with `shiftwatch serve` or drop --server"
        ) from None
    return answer["report"], answer.get("views")
