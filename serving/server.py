"""A local HTTP server that follows TensorFlow Serving's REST API.

`python -m serving.server --model_base_path BASE --model_name NAME` serves the
highest integer version under `BASE/NAME` at

- `POST /v1/models/NAME[/versions/N]:predict` (row `instances` or columnar
  `inputs` format, `{"b64": ...}` strings, `_bytes` outputs as b64),
- `GET /v1/models/NAME[/versions/N]` (model status),
- `GET /v1/models/NAME[/versions/N]/metadata` (signature defs),

with TF Serving's JSON typing (an int32 input given 1.5, true or "7" is a 400,
never a cast), its error bodies (`{"error": "message"}`) and its status-code to
HTTP mapping. Safe defaults: binds 127.0.0.1, 1 MiB request bodies (413),
at most 8 requests running (503 "server busy"), a 30 s deadline (504). A
background thread polls for a new version every second and loads it before
swapping it in; requests in flight keep the version they started with.

In process (tests): `server = make_server(base, name, port=0)`, then
`threading.Thread(target=server.serve_forever, daemon=True).start()`,
`server.server_address`, and `server.shutdown(); server.server_close()`.
"""

import argparse
import base64
import binascii
import concurrent.futures
import http.server
import json
import logging
import math
import os
import re
import threading

import numpy as np

from serving.fidelity import (
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    ServingError,
    _read_meta_graph,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_POLL_S = 1.0

# http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}
# Codes whose message is the caller's business; others get a generic message.
_CLIENT_CODES = frozenset(
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"]
    + ["RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"]
)

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

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}
_FLOAT_DTYPES = frozenset(["float32", "float64"])


def _invalid(message):
    return ServingError("INVALID_ARGUMENT", message)


# --- Versions -------------------------------------------------------------------


def available_versions(model_dir):
    """Integer version directories under `model_dir` (TF Serving ignores others)."""
    try:
        names = os.listdir(model_dir)
    except OSError:
        return []
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))
    )


class LoadedVersion:
    """One loaded version: the SavedModel, its SignatureDefMap, its number."""

    def __init__(self, export_dir, version):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

        self.version = version
        self.signature_defs = {
            name: signature
            for name, signature in _read_meta_graph(export_dir).signature_def.items()
            if name != INIT_OP_SIGNATURE
        }
        self.model = tf.saved_model.load(export_dir)
        self.functions = dict(self.model.signatures)

    def input_dtypes(self, signature_name):
        import tensorflow as tf

        signature = self.signature_defs[signature_name]
        return {
            key: tf.as_dtype(info.dtype).name for key, info in signature.inputs.items()
        }

    def run(self, signature_name, inputs):
        """Runs a signature on numpy inputs; returns {output: numpy array}."""
        import tensorflow as tf

        try:
            outputs = self.functions[signature_name](
                **{key: tf.constant(value) for key, value in inputs.items()}
            )
            return {key: value.numpy() for key, value in outputs.items()}
        except tf.errors.OpError as error:
            raise _status_error(error) from error


def _status_error(error):
    from serving.fidelity import STATUS_CODE_NAMES

    code = error.error_code
    name = STATUS_CODE_NAMES[code] if 0 <= code < len(STATUS_CODE_NAMES) else "UNKNOWN"
    return ServingError(name, clean_message(error.message or ""))


_NOISE_LINES = ("Graph execution error", "Detected at node", "<stack traces")


def clean_message(message):
    """A TF error message without its stack, node names and file paths."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(_NOISE_LINES) or line[:1].isspace():
            continue  # Headers, and stack-trace lines (which name files).
        lines.append(stripped)
    text = " ".join(lines)
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
    text = re.sub(r"(?<![\w.])/[^\s\]\[\'\"]+", "<path>", text)
    return text.strip() or "The model rejected the request."


class ModelManager:
    """Holds the served version of one model and swaps in newer ones."""

    def __init__(self, base_path, model_name, poll_s=DEFAULT_POLL_S):
        self.model_name = model_name
        self.model_dir = os.path.join(base_path, model_name)
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._current = None
        self._stop = threading.Event()
        self._thread = None
        self.reload()
        if self._current is None:
            raise FileNotFoundError(
                f"No integer version directory under {self.model_dir}."
            )

    @property
    def current(self):
        with self._lock:
            return self._current

    def reload(self):
        """Loads the highest version if it is newer; returns True if swapped."""
        versions = available_versions(self.model_dir)
        current = self.current
        if not versions or (current is not None and versions[-1] <= current.version):
            return False
        version = versions[-1]
        # Load first, then swap: requests in flight keep the old version.
        loaded = LoadedVersion(os.path.join(self.model_dir, str(version)), version)
        with self._lock:
            self._current = loaded
        logger.info("Serving %s version %d.", self.model_name, version)
        return True

    def start_polling(self):
        if self.poll_s and self._thread is None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self):
        while not self._stop.wait(self.poll_s):
            try:
                self.reload()
            except Exception:  # A bad new version: keep serving the old one.
                logger.exception("Could not load a new version; keeping the old.")

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def get(self, model_name, version):
        """The loaded version for a request, or a NOT_FOUND ServingError."""
        loaded = self.current
        if model_name != self.model_name:
            spec = f"Latest({model_name})" if version is None else None
            spec = spec or f"Specific({model_name}, {version})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {spec}")
        if version is not None and int(version) != loaded.version:
            raise ServingError(
                "NOT_FOUND",
                f"Servable not found for request: Specific({model_name}, {version})",
            )
        return loaded


# --- JSON -> tensors --------------------------------------------------------------


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _shape(value, where):
    """Shape of a nested list of scalars; a 400 if it is ragged."""
    if isinstance(value, list):
        if not value:
            return (0,)
        shapes = {_shape(item, where) for item in value}
        if len(shapes) != 1:
            raise _invalid(
                f"{where}: the nested lists are ragged (their lengths differ); "
                "every list at one depth must have the same length."
            )
        return (len(value), *shapes.pop())
    if isinstance(value, dict) and not _is_b64(value):
        raise _invalid(f"{where}: expected a value or list, got a JSON object.")
    return ()


def _scalar(value, dtype, where):
    if dtype == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value) and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"{where}: invalid base64 in {{'b64': ...}}.") from None
        raise _invalid(
            f"{where}: expects a string (or {{'b64': ...}}), got {json.dumps(value)}."
        )
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise _invalid(f"{where}: expects a bool, got {json.dumps(value)}.")
    if dtype in _INT_RANGES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid(
                f"{where}: expects {dtype}, got {json.dumps(value)}; "
                "send JSON integers (no decimals, booleans or strings)."
            )
        low, high = _INT_RANGES[dtype]
        if not low <= value <= high:
            raise _invalid(f"{where}: {value} is out of range for {dtype}.")
        return value
    if dtype in _FLOAT_DTYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid(f"{where}: expects {dtype}, got {json.dumps(value)}.")
        if dtype == "float32" and math.isfinite(value) and abs(value) > 3.4028235e38:
            raise _invalid(f"{where}: {value} is out of range for float32.")
        return float(value)
    raise ServingError("UNIMPLEMENTED", f"{where}: dtype {dtype} is not supported.")


def _flatten(value, out):
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def to_array(value, dtype, where):
    """A JSON value as a numpy array of the signature's dtype, checked strictly."""
    shape = _shape(value, where)
    flat = []
    _flatten(value, flat)
    items = [_scalar(item, dtype, where) for item in flat]
    if dtype == "string":
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        array = np.array(items, dtype=np.dtype(dtype))
    return array.reshape(shape)


def parse_predict(body, loaded):
    """(signature_name, numpy inputs, row_format) of a predict request body."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise _invalid(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise _invalid("JSON Value: request body must be a JSON object.")
    signature_name = request.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise _invalid("'signature_name' must be a string.")
    if signature_name not in loaded.signature_defs:
        raise _invalid(
            f'Serving signature name: "{signature_name}" not found in signature def'
        )
    dtypes = loaded.input_dtypes(signature_name)
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise _invalid(
            "Missing 'inputs' or 'instances' key"
            if not has_rows
            else "Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys exists"
        )
    if has_rows:
        return signature_name, _parse_rows(request["instances"], dtypes), True
    return signature_name, _parse_columns(request["inputs"], dtypes), False


def _check_names(names, dtypes):
    expected = sorted(dtypes)
    if sorted(names) != expected:
        extra = sorted(set(names) - set(expected))
        missing = sorted(set(expected) - set(names))
        raise _invalid(
            f"input names do not match the signature: expected {expected}; "
            f"unknown {extra}; missing {missing}."
        )


def _parse_rows(instances, dtypes):
    if not isinstance(instances, list):
        raise _invalid("'instances' must be a JSON list.")
    if not instances:
        raise _invalid("'instances' must be a non-empty list.")
    named = all(isinstance(row, dict) and not _is_b64(row) for row in instances)
    if not named:
        if any(isinstance(row, dict) and not _is_b64(row) for row in instances):
            raise _invalid("'instances' mixes JSON objects and plain values.")
        if len(dtypes) != 1:
            raise _invalid(
                f"the signature has {len(dtypes)} inputs {sorted(dtypes)}: every "
                "instance must be a JSON object with those keys."
            )
        (name,) = dtypes
        return {name: to_array(instances, dtypes[name], f"input '{name}'")}
    for row in instances:
        _check_names(list(row), dtypes)
    inputs = {}
    for name, dtype in dtypes.items():
        inputs[name] = to_array([row[name] for row in instances], dtype, f"'{name}'")
    return inputs


def _parse_columns(columns, dtypes):
    if isinstance(columns, dict) and not _is_b64(columns):
        _check_names(list(columns), dtypes)
        return {
            name: to_array(columns[name], dtype, f"input '{name}'")
            for name, dtype in dtypes.items()
        }
    if len(dtypes) != 1:
        raise _invalid(
            f"the signature has {len(dtypes)} inputs {sorted(dtypes)}: 'inputs' "
            "must be a JSON object with those keys."
        )
    (name,) = dtypes
    return {name: to_array(columns, dtypes[name], f"input '{name}'")}


# --- tensors -> JSON --------------------------------------------------------------


def _jsonable(array, as_bytes):
    if array.dtype.kind in "SOU":

        def encode(value):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not as_bytes:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}

        if array.ndim == 0:
            return encode(array.item())
        return np.vectorize(encode, otypes=[object])(array).tolist()
    return array.tolist()


def format_outputs(outputs, row_format):
    names = sorted(outputs)
    values = {
        name: _jsonable(np.asarray(outputs[name]), name.endswith("_bytes"))
        for name in names
    }
    if not row_format:
        if len(names) == 1:
            return {"outputs": values[names[0]]}
        return {"outputs": values}
    sizes = set()
    for name in names:
        array = np.asarray(outputs[name])
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise _invalid(
            "Tensor name: outputs have inconsistent batch sizes "
            f"{sorted(sizes)}; the row format needs one."
        )
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    (size,) = sizes
    return {
        "predictions": [{name: values[name][i] for name in names} for i in range(size)]
    }


# --- Status and metadata ----------------------------------------------------------


def model_status(loaded):
    return {
        "model_version_status": [
            {
                "version": str(loaded.version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def model_metadata(loaded, model_name):
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in loaded.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    return {
        "model_spec": {
            "name": model_name,
            "signature_name": "",
            "version": str(loaded.version),
        },
        "metadata": {
            "signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True
            )
        },
    }


# --- HTTP -------------------------------------------------------------------------


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
        self.wfile.write(body)

    def _error(self, code, message):
        self._send(code, {"error": message})

    def _serving_error(self, error):
        status = HTTP_STATUS.get(error.code, 500)
        message = error.message if error.code in _CLIENT_CODES else None
        self._error(status, message or "Internal error.")

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
                self._predict(*match.groups(), body)
                return
        elif method == "GET":
            match = _STATUS_RE.fullmatch(path)
            if match and match.group(1):
                name, version, label, metadata = match.groups()
                if label is not None:
                    raise _invalid("Version labels are not supported by this server.")
                loaded = self.server.manager.get(name, version)
                if metadata:
                    self._send(200, model_metadata(loaded, name))
                else:
                    self._send(200, model_status(loaded))
                return
        # http_rest_api_handler.cc: anything else under /v1/ is a 400.
        raise _invalid(f"Malformed request: {method} {path}")

    def _predict(self, name, version, label, verb, body):
        if verb.lower() != "predict":
            if verb.lower() in ("classify", "regress"):
                raise ServingError(
                    "UNIMPLEMENTED", f"{verb} is not supported; use :predict."
                )
            raise _invalid(f"Malformed request: POST {self._path()}")
        if label is not None:
            raise _invalid("Version labels are not supported by this server.")
        loaded = self.server.manager.get(name, version)
        signature_name, inputs, row_format = parse_predict(body, loaded)
        server = self.server
        if not server.slots.acquire(blocking=False):
            raise ServingError("UNAVAILABLE", "server busy; retry later.")
        released = False
        try:
            future = server.executor.submit(loaded.run, signature_name, inputs)
            try:
                outputs = future.result(timeout=server.request_timeout_s)
            except concurrent.futures.TimeoutError:
                # The computation keeps its slot until it really ends.
                future.add_done_callback(lambda _: server.slots.release())
                released = True
                raise ServingError(
                    "DEADLINE_EXCEEDED",
                    f"Request took longer than {server.request_timeout_s} s.",
                ) from None
        finally:
            if not released:
                server.slots.release()
        self._send(200, format_outputs(outputs, row_format))


class ModelServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address,
        manager,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        max_concurrent=DEFAULT_MAX_CONCURRENT,
        request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    ):
        super().__init__(address, _Handler)
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="predict"
        )

    def server_close(self):
        super().server_close()
        self.manager.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_server(
    base_path,
    model_name,
    host="127.0.0.1",
    port=0,
    max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    max_concurrent=DEFAULT_MAX_CONCURRENT,
    request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    poll_s=DEFAULT_POLL_S,
):
    """A ModelServer bound to (host, port), not yet serving.

    Loads the highest version under `base_path/model_name` now; with `poll_s`
    (seconds, 0 or None to disable) a thread swaps in newer versions.
    """
    manager = ModelManager(base_path, model_name, poll_s=poll_s)
    server = ModelServer(
        (host, port),
        manager,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent,
        request_timeout_s=request_timeout_s,
    )
    manager.start_polling()
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.server")
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max_concurrent", type=int, default=DEFAULT_MAX_CONCURRENT)
    parser.add_argument(
        "--request_timeout_s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=DEFAULT_POLL_S
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = make_server(
        args.model_base_path,
        args.model_name,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_concurrent=args.max_concurrent,
        request_timeout_s=args.request_timeout_s,
        poll_s=args.file_system_poll_wait_seconds,
    )
    host, port = server.server_address[:2]
    logger.info("REST API at http://%s:%d/v1/models/%s", host, port, args.model_name)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
