"""A local HTTP server that follows TensorFlow Serving's REST API.

`python -m serving.server --model_base_path DIR --model_name NAME` serves
`BASE/NAME` (or `--model_config_file models.config`: several models, version
policies and labels; see `serving.flags`) at

- `POST /v1/models/NAME[/versions/N | /labels/L]:predict` (row `instances` or
  columnar `inputs` format, `{"b64": ...}` strings, `_bytes` outputs as b64),
- `POST /v1/models/NAME[/versions/N | /labels/L]:classify` (`examples` as
  JSON objects of tf.Example features, an optional `context`; answers
  `{"results": [[[label, score], ...], ...]}`; `serving.json_classify`,
  `serving.classify`); `:regress` is UNIMPLEMENTED (501), and a verb in
  another case (`:Predict`) is a 400 "Malformed request", as TF Serving
  compares the verb exactly,
- `GET /v1/models/NAME[/versions/N | /labels/L]` (model status: every version
  the server has seen, newest first; like TF Serving, a label is not resolved
  for the status, see `serving.models.ServerCore.status`),
- `GET /v1/models/NAME[/versions/N | /labels/L]/metadata` (signature defs),

with TF Serving's JSON typing (`serving.json_codec`), its error bodies
(`{"error": "message"}`) and its status-code to HTTP mapping; any other
method or path under /v1/ is a 400 "Malformed request: METHOD PATH"
(http_rest_api_handler.cc), a version that is not an int64 a 400 "Failed
to convert version" (http_rest_api_util.cc). An absolute-form target
(`POST http://host:port/v1/...`) is read by its path, as libevent does.

Limits (docs/serving.md lists them next to TF Serving's): binds 127.0.0.1;
request bodies up to `--max_body_bytes` (1 MiB; 413, read and discarded so
the client sees it; framing per `serving.http_body`); answers up to
`--max_response_bytes` (16 MiB of JSON, checked before running and before
encoding, `serving.responses`); a classify request's examples up to 16
times the body limit once its context is merged into each
(`serving.classify`); at most `--max_concurrent` predictions and
classifications (8; 503 "server busy"), each parsed, run and encoded within
its slot and `--request_timeout_s` (30 s; 504); at most `--max_connections`
open connections (64; 503 beyond, `serving.connections`), each closed after
`--idle_timeout_s` (50 s, libevent's) without a byte. Versions are loaded,
warmed up and swapped as `serving.models` describes; requests in flight
keep the version they started with.

In process (tests): `server = make_server(model_dir, name, port=0)`, then
`threading.Thread(target=server.serve_forever, daemon=True).start()`,
`server.server_address`, and `server.shutdown(); server.server_close()`.
"""

import argparse
import http.server
import json
import logging
import re
import socket
import sys
import urllib.parse

from . import classify, flags, http_body
from .connections import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionCap,
    Refuser,
    busy_response,
)
from .json_classify import classification_pieces, parse_classify
from .json_codec import metadata_json, parse_predict, status_json
from .limits import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    RequestLimiter,
)
from .models import DEFAULT_POLL_S, MAX_VERSION
from .responses import DEFAULT_MAX_RESPONSE_BYTES, ResponseBudget, json_pieces
from .status import HTTP_STATUS, ServingError, invalid, public_message

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = flags.DEFAULT_MAX_BODY_BYTES

# http_rest_api_util.cc (case-insensitive; RE2's \d is ASCII [0-9] only).
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(\w+)",
    re.IGNORECASE | re.ASCII,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE | re.ASCII,
)
_ABSOLUTE_FORM = re.compile(r"https?://", re.IGNORECASE)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "tf-switch-serving"
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: without it, a small response written in pieces waits for
    # the client's delayed ACK (~40 ms per keep-alive request on Linux).
    disable_nagle_algorithm = True

    def setup(self):
        # Every read and write of the connection: libevent drops a connection
        # after its timeout (50 s) without a byte; http.server then closes it.
        self.timeout = self.server.idle_timeout_s
        super().setup()

    def log_message(self, format, *args):  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)

    def _send_pieces(self, code, pieces):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(sum(len(p) for p in pieces)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # A HEAD answer has headers only.
            for piece in pieces:
                self.wfile.write(piece)

    def _send(self, code, payload):
        self._send_pieces(code, [json.dumps(payload).encode("utf-8")])

    def _error(self, code, message):
        self._send(code, {"error": message})

    def _serving_error(self, error):
        self._error(HTTP_STATUS.get(error.code, 500), public_message(error))

    def _path(self):
        path = self.path
        if _ABSOLUTE_FORM.match(path):  # POST http://host:port/v1/... (RFC 9112)
            path = urllib.parse.urlsplit(path).path or "/"
        return path.split("?", 1)[0]

    def handle_expect_100(self):
        """A body announced over the limit is refused before it is sent."""
        try:
            length = http_body.content_length(self.headers)
        except http_body.HttpError:
            length = None  # do_POST answers the malformed header
        if length is not None and length > self.server.max_body_bytes:
            self.close_connection = True
            self._error(
                413,
                f"Request body of {length} bytes is over the limit of "
                f"{self.server.max_body_bytes} bytes (--max_body_bytes).",
            )
            return False
        return super().handle_expect_100()

    def _read_body(self):
        """The request body, or None after answering an error."""
        try:
            return http_body.read_body(
                self.rfile, self.headers, self.server.max_body_bytes
            )
        except http_body.HttpError as error:
            self.close_connection = True
            self._error(error.status, error.message)
            if error.status == 413:  # Let a client that writes first read it.
                http_body.drain(self.rfile, error)
            return None

    def _dispatch(self, method):
        try:
            self._handle(method)
        except ServingError as error:
            self._serving_error(error)
        except (TimeoutError, ConnectionError):
            raise  # http.server drops the connection
        except Exception:  # Never a traceback or a path in the answer.
            logger.exception("Internal error on %s %s", method, self._path())
            self._error(500, "Internal error.")

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _other_method(self):
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other_method  # noqa: N815

    def _handle(self, method):
        path = self._path()
        if not path.lower().startswith("/v1/"):
            self.close_connection = method != "GET"
            self._error(404, "Not found.")
            return
        if method == "POST":
            body = self._read_body()
            if body is None:
                return
            match = _PREDICT_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                self._post(*_decoded(name, version, label), verb, body)
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

    def _post(self, name, version, label, verb, body):
        # http_rest_api_handler.cc compares the verb as written: ":Predict"
        # passes the case-insensitive path regex, then no verb matches.
        if verb == "predict":
            self._predict(name, version, label, body)
        elif verb == "classify":
            self._classify(name, version, label, body)
        elif verb == "regress":
            raise ServingError(
                "UNIMPLEMENTED", "regress is not supported; use :predict or :classify."
            )
        else:
            raise invalid(f"Malformed request: POST {self._path()}")

    def _classify(self, name, version, label, body):
        server = self.server

        def work():  # as ProcessClassifyRequest: the JSON first, then the model
            request = parse_classify(body)
            request.model_spec.name = name
            loaded = server.core.get(name, version, label)
            _, result = classify.run_classify(
                request,
                loaded,
                method_name_check=server.core.signature_method_name_check,
                budget=server.budget,
                max_example_bytes=server.max_example_bytes,
            )
            return classification_pieces(result)

        self._send_pieces(200, server.limiter.run(work))

    def _predict(self, name, version, label, body):
        loaded = self.server.core.get(name, version, label)
        budget = self.server.budget

        def work():  # parse, run and encode, all within one slot and deadline
            signature_name, inputs, row_format = parse_predict(body, loaded)
            budget.check_before_run(loaded, signature_name, inputs, row_format)
            outputs = loaded.run(signature_name, inputs)
            budget.check_outputs(outputs, loaded, row_format)
            return json_pieces(outputs, row_format)

        self._send_pieces(200, self.server.limiter.run(work))


def _decoded(name, version, label):
    """URL-decoded name and label (http_rest_api_util.cc DecodeArg), int version."""
    name = urllib.parse.unquote(name) if name else name
    label = urllib.parse.unquote(label) if label else label
    if version is not None:
        # absl::SimpleAtoi into an int64, as ParseModelInfo does.
        if len(version) > 19 or int(version) > MAX_VERSION:
            shown = version if len(version) <= 40 else version[:40] + "..."
            raise invalid(f"Failed to convert version: {shown} to numeric.")
        version = int(version)
    return name, version, label


class ModelServer(http.server.ThreadingHTTPServer):
    """The REST server over a `ServerCore` and a `RequestLimiter`."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of new connections
    # from more clients overflows it and some see "connection reset".
    request_queue_size = 128

    def __init__(
        self,
        address,
        core,
        limiter,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
        max_connections=DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S,
    ):
        # Set before binding: a failed bind calls server_close().
        self.core = core
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.max_example_bytes = classify.EXAMPLE_BYTES_PER_BODY_BYTE * max_body_bytes
        self.budget = ResponseBudget(max_response_bytes, "json")
        self.connections = ConnectionCap(max_connections)
        self.refuser = Refuser(busy_response(max_connections))
        self.idle_timeout_s = idle_timeout_s
        super().__init__(address, _Handler)

    @property
    def slots(self):
        return self.limiter.slots

    def process_request(self, request, client_address):
        if not self.connections.acquire():
            self.refuser.refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def shutdown_request(self, request):
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone
        else:
            http_body.linger(request)
        self.close_request(request)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (TimeoutError, ConnectionError)):
            logger.debug("Connection from %s ended: %r", client_address, error)
        else:
            logger.exception("Error on the connection from %s", client_address)

    def server_close(self):
        super().server_close()
        self.refuser.stop()
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
    max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
    max_connections=DEFAULT_MAX_CONNECTIONS,
    idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S,
    **core_options,
):
    """A ModelServer bound to (host, port), not yet serving.

    Loads `base_path/model_name` now (or serves `core`, a
    `serving.models.ServerCore`, e.g. from `serving.flags.make_core(
    model_config_file=...)`); with `poll_s` (seconds, 0 or None to disable) a
    thread loads new versions. `core_options` go to `serving.flags.make_core`
    (`model_config_file`, `enable_warmup`, `allow_labels_for_unavailable`).
    Raises OSError (the core released) if the address cannot be bound.
    """
    owns_core = core is None
    if owns_core:
        core = flags.make_core(base_path, model_name, poll_s=poll_s, **core_options)
    limiter = RequestLimiter(max_concurrent, request_timeout_s)
    try:
        server = ModelServer(
            (host, port),
            core,
            limiter,
            max_body_bytes=max_body_bytes,
            max_response_bytes=max_response_bytes,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
        )
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
    flags.add_rest_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    core = flags.core_from_args(args, parser)
    try:
        server = make_server(
            host=args.host,
            port=args.port,
            max_body_bytes=args.max_body_bytes,
            max_response_bytes=args.max_response_bytes,
            max_concurrent=args.max_concurrent,
            request_timeout_s=args.request_timeout_s,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout_s,
            core=core,
        )
    except OSError as error:
        core.stop()
        parser.exit(1, flags.bind_failure(args.host, args.port, error))
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
