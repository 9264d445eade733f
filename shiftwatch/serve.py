"""shiftwatch serve: keep the model and the reference loaded, answer checks over HTTP.

A cold `shiftwatch check` spends most of its time importing torch and loading the model.
`shiftwatch serve` does that once and then answers `shiftwatch check BATCH --server URL` (or
any HTTP client) in the time of the forward pass and the detectors. It runs the very same
`check_images` as a local check, so the report and the verdict are the same.

    shiftwatch serve [--port 8765]        # binds 127.0.0.1 only
    shiftwatch check batch.npy --server http://127.0.0.1:8765

Endpoints: GET /health -> {"ok": true, "model", "reference", "images"}; POST /check with a
.npy body (float32 (N, 28, 28) in [0, 1], what `batch.load_batch` returns) and the batch's
description as JSON in the X-Shiftwatch-Batch header -> {"report": ..., "views": ... (with
?views=1, for the HTML report)}. Checks are answered one at a time (the model uses every core).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from shiftwatch import ShiftwatchError

HELP = "keep the model loaded and answer `check --server` requests on 127.0.0.1"
MAX_BODY = 2 * 1024 ** 3  # 2 GiB of float32 images: ~680,000 images per request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (default 8765; 0 = any free)")
    parser.add_argument("--reference", type=Path, default=None, help="as for check")
    parser.add_argument("--model", default=None, help="as for check (a path or models:/NAME@ALIAS)")
    parser.add_argument("--params", type=Path, default=None, help="as for check")
    parser.add_argument("--estimator", type=Path, default=None, help="as for check")
    parser.add_argument("--finetuned", type=Path, default=None, help="as for check")


def run(args: argparse.Namespace) -> int:
    from shiftwatch.checking import load_inputs, load_network

    try:
        settings, ref, paths = load_inputs(args.reference, args.model, args.params, args.estimator,
                                           args.finetuned)
        network, _ = load_network(paths["model"])
        ref["finetuned_network"] = load_network(paths["finetuned"])[0]
        server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(settings, ref, network, paths))
    except (ShiftwatchError, OSError) as err:
        print(f"shiftwatch serve: error: {err}", file=sys.stderr)
        return 2
    print(f"shiftwatch serve: http://127.0.0.1:{server.server_port} (model {paths['model']}, "
          f"reference {paths['reference']}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _handler(settings, ref: dict, network, paths: dict):
    from shiftwatch.checking import check_images

    one_at_a_time = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if urlparse(self.path).path != "/health":
                return self._reply(404, {"error": "GET /health or POST /check"})
            self._reply(200, {"ok": True, "model": str(paths["model"]), "reference": str(paths["reference"]),
                              "images": len(ref["labels"])})

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/check":
                return self._reply(404, {"error": "POST /check"})
            try:
                size = int(self.headers.get("Content-Length", "0"))
                if not 0 < size <= MAX_BODY:
                    raise ShiftwatchError(f"request body of {size} bytes; send one .npy array of images")
                images = _images(self.rfile.read(size))
                batch = json.loads(self.headers.get("X-Shiftwatch-Batch") or "{}")
                with one_at_a_time:
                    report, views = check_images(images, batch, settings, ref, network, paths)
            except (ShiftwatchError, ValueError) as err:
                return self._reply(400, {"error": str(err)})
            answer = {"report": report}
            if parse_qs(url.query).get("views") == ["1"]:
                answer["views"] = {k: np.asarray(v).tolist() for k, v in vars(views).items()}
            self._reply(200, answer)

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            pass  # one line per request on stderr would drown the operator's logs

    return Handler


def _images(body: bytes) -> np.ndarray:
    try:
        images = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception:
        raise ShiftwatchError("the body is not a .npy array") from None
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.float32 or len(images) == 0:
        raise ShiftwatchError(f"expected float32 images (N, 28, 28), N >= 1; got {images.dtype} {images.shape}")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ShiftwatchError("pixel values must be finite and in [0, 1]")
    return images


def request_check(url: str, images: np.ndarray, batch_info: dict, views: bool = False,
                  timeout: float = 600) -> tuple[dict, dict | None]:
    """The client side: (report, views as lists or None) from a `shiftwatch serve` at `url`."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images, dtype=np.float32))
    request = Request(f"{url.rstrip('/')}/check{'?views=1' if views else ''}", data=buffer.getvalue(),
                      headers={"Content-Type": "application/octet-stream",
                               "X-Shiftwatch-Batch": json.dumps(batch_info)}, method="POST")
    try:
        with urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except HTTPError as err:
        detail = json.loads(err.read() or b"{}").get("error", err.reason)
        raise ShiftwatchError(f"--server {url}: {detail}") from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ShiftwatchError(f"--server {url}: no answer ({reason}); start one with `shiftwatch serve` "
                              "or drop --server") from None
    return answer["report"], answer.get("views")
