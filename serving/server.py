"""A local HTTP server that follows TensorFlow Serving's REST API.

`python -m serving.server --model_base_path DIR --model_name NAME` serves
`BASE/NAME` (or `--model_config_file models.config`: several models, version
policies and labels; see `serving.flags`) at

- `POST /v1/models/NAME[/versions/N | /labels/L]:predict` (row `instances` or
  columnar `inputs` format, `{"b64": ...}` strings, `_bytes` outputs as b64),
- `GET /v1/models/NAME[/versions/N | /labels/L]` (model status: every version
  the server has seen, newest first; like TF Serving, a label is not resolved
  for the status, see `serving.models.ServerCore.status`),
- `GET /v1/models/NAME[/versions/N | /labels/L]/metadata` (signature defs),

with TF Serving's JSON typing (`serving.json_codec`), its error bodies
(`{"error": "message"}`) and its status-code to HTTP mapping; any other
method or path under /v1/ is a 400 "Malformed request: METHOD PATH"
(http_rest_api_handler.cc). Safe defaults: binds 127.0.0.1, 1 MiB request
bodies (413), at most 8 requests running (503 "server busy"), a 30 s deadline
(504) (`serving.limits`). Versions are loaded, warmed up and swapped as
`serving.models` describes; requests in flight keep the version they started
with.

In process (tests): `server = make_server(model_dir, name, port=0)`, then
`threading.Thread(target=server.serve_forever, daemon=True).start()`,
`server.server_address`, and `server.shutdown(); server.server_close()`.
"""

import argparse
import http.server
import json
import logging
import re
import urllib.parse

from . import flags
from .json_codec import (
    format_outputs,
    metadata_json,
    parse_predict,
    status_json,
)
from .limits import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    RequestLimiter,
)
from .models import DEFAULT_POLL_S
from .status import HTTP_STATUS, ServingError, invalid, public_message

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20

# http_rest_api_util.cc (case-insensitive).
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(\w+)",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "tf-switch-serving"
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: without it, a small response written in pieces waits for
    # the client's delayed ACK (~40 ms per keep-alive request on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, code, payload):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # A HEAD answer has headers only.
            self.wfile.write(body)

    def _error(self, code, message):
        self._send(code, {"error": message})

    def _serving_error(self, error):
        self._error(HTTP_STATUS.get(error.code, 500), public_message(error))

    def _path(self):
        return self.path.split("?", 1)[0]

    def _read_body(self):
        """The request body, or None after answering an error."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._error(411, "Send a Content-Length; chunked bodies are refused.")
            return None
        try:
            length = int(length or 0)
        except ValueError:
            self.close_connection = True
            self._error(400, "Invalid Content-Length.")
            return None
        if length < 0:
            self.close_connection = True
            self._error(400, "Invalid Content-Length.")
            return None
        if length > self.server.max_body_bytes:
            self.close_connection = True
            # Drain a moderately large body so the client reads the answer
            # instead of a reset connection; beyond that, just close.
            remaining = length if length <= 16 * self.server.max_body_bytes else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
            self._error(
                413,
                f"Request body of {length} bytes is over the limit of "
                f"{self.server.max_body_bytes} bytes.",
            )
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method):
        try:
            self._handle(method)
        except ServingError as error:
            self._serving_error(error)
        except Exception:  # Never a traceback or a path in the answer.
            logger.exception("Internal error on %s %s", method, self._path())
            self._error(500, "Internal error.")

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _other_method(self):
        if self.headers.get("Content-Length"):
            self.close_connection = True
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other_method  # noqa: N815

    def _handle(self, method):
        path = self._path()
        if not path.lower().startswith("/v1/"):
            self.close_connection = bool(self.headers.get("Content-Length"))
            self._error(404, "Not found.")
            return
        if method == "POST":
            body = self._read_body()
            if body is None:
                return
            match = _PREDICT_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                self._predict(*_decoded(name, version, label), verb, body)
                return
        elif method == "GET":
            match = _STATUS_RE.fullmatch(path)
            if match and match.group(1):
                name, version, label = _decoded(*match.groups()[:3])
                core = self.server.core
                if match.group(4):
                    self._send(200, metadata_json(name, core.get(name, version, label)))
                else:
                    self._send(200, status_json(core.status(name, version)))
                return
        # http_rest_api_handler.cc: anything else under /v1/ is a 400.
        raise invalid(f"Malformed request: {method} {path}")

    def _predict(self, name, version, label, verb, body):
        if verb.lower() != "predict":
            if verb.lower() in ("classify", "regress"):
                raise ServingError(
                    "UNIMPLEMENTED", f"{verb} is not supported; use :predict."
                )
            raise invalid(f"Malformed request: POST {self._path()}")
        loaded = self.server.core.get(name, version, label)
        signature_name, inputs, row_format = parse_predict(body, loaded)
        outputs = self.server.limiter.run(loaded.run, signature_name, inputs)
        self._send(200, format_outputs(outputs, row_format))


def _decoded(name, version, label):
    """URL-decoded name and label (http_rest_api_util.cc DecodeArg), int version."""
    name = urllib.parse.unquote(name) if name else name
    label = urllib.parse.unquote(label) if label else label
    return name, None if version is None else int(version), label


class ModelServer(http.server.ThreadingHTTPServer):
    """The REST server over a `ServerCore` and a `RequestLimiter`."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of new connections
    # from more clients overflows it and some see "connection reset".
    request_queue_size = 128

    def __init__(self, address, core, limiter, max_body_bytes=DEFAULT_MAX_BODY_BYTES):
        super().__init__(address, _Handler)
        self.core = core
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes

    @property
    def slots(self):
        return self.limiter.slots

    def server_close(self):
        super().server_close()
        self.core.stop()
        self.limiter.shutdown()


def make_server(
    base_path=None,
    model_name=None,
    host="127.0.0.1",
    port=0,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    max_concurrent=DEFAULT_MAX_CONCURRENT,
    request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    poll_s=DEFAULT_POLL_S,
    core=None,
    **core_options,
):
    """A ModelServer bound to (host, port), not yet serving.

    Loads `base_path/model_name` now (or serves `core`, a
    `serving.models.ServerCore`, e.g. from `serving.flags.make_core(
    model_config_file=...)`); with `poll_s` (seconds, 0 or None to disable) a
    thread loads new versions. `core_options` go to `serving.flags.make_core`
    (`model_config_file`, `enable_warmup`, `allow_labels_for_unavailable`).
    """
    owns_core = core is None
    if owns_core:
        core = flags.make_core(base_path, model_name, poll_s=poll_s, **core_options)
    limiter = RequestLimiter(max_concurrent, request_timeout_s)
    try:
        server = ModelServer((host, port), core, limiter, max_body_bytes=max_body_bytes)
    except OSError:  # the port is taken: release what was made for it
        limiter.shutdown()
        if owns_core:
            core.stop()
        raise
    core.start_polling()
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.server")
    flags.add_model_flags(parser)
    flags.add_endpoint_flags(parser, port=8501)
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    core = flags.core_from_args(args, parser)
    server = make_server(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_concurrent=args.max_concurrent,
        request_timeout_s=args.request_timeout_s,
        core=core,
    )
    host, port = server.server_address[:2]
    for name in core.models:
        logger.info("REST API at http://%s:%d/v1/models/%s", host, port, name)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
