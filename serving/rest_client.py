"""`RestClient`: TF Serving's REST API, columnar `inputs` format, and
`:classify`.

Strings go as JSON strings when they are UTF-8 and as `{"b64": ...}`
otherwise; outputs come back as numpy arrays of the signature's dtypes.
"""

import base64
import json
import urllib.error
import urllib.request

import numpy as np

from .client_base import (
    NUMPY_DTYPES,
    BaseClient,
    ServingClientError,
    classification_arrays,
    to_bytes,
)


def json_value(array):
    array = np.asarray(array)
    if array.dtype.kind in "SUO":

        def encode(value):
            if isinstance(value, str):
                return value
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}

        if array.ndim == 0:
            return encode(array.item())
        return np.vectorize(encode, otypes=[object])(array).tolist()
    return array.tolist()


def _from_json(value, dtype_name):
    target = NUMPY_DTYPES.get(dtype_name)
    if target is object:

        def decode(item):
            if isinstance(item, dict) and "b64" in item:
                return base64.b64decode(item["b64"])
            return to_bytes(item)

        array = np.asarray(value, dtype=object)
        if array.ndim == 0:
            return np.asarray(decode(array.item()), dtype=object)
        return np.vectorize(decode, otypes=[object])(array)
    return np.asarray(value, dtype=target)


class RestClient(BaseClient):
    """A client of TF Serving's REST API (columnar `inputs` format)."""

    def __init__(self, url="http://127.0.0.1:8501", model_name="switch", timeout=10):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout

    def _request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            payload = error.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload or error.reason
            raise ServingClientError(error.code, message) from None

    def _model_path(self):
        return f"/v1/models/{self.model_name}"

    def _predict(self, inputs, signature_name):
        body = {
            "signature_name": signature_name,
            "inputs": {name: json_value(value) for name, value in inputs.items()},
        }
        outputs = self._request("POST", self._model_path() + ":predict", body)[
            "outputs"
        ]
        specs = (self._signature_info(signature_name) or {}).get("outputs", {})
        if not isinstance(outputs, dict) or set(outputs) - set(specs):
            # One output comes back bare; its name is the signature's one output.
            outputs = {next(iter(specs), "output"): outputs}
        return {
            name: _from_json(value, specs.get(name, {}).get("dtype"))
            for name, value in outputs.items()
        }

    def _classify(self, examples, context, signature_name):
        body = {"examples": examples}
        if signature_name:
            body["signature_name"] = signature_name
        if context is not None:
            body["context"] = context
        results = self._request("POST", self._model_path() + ":classify", body)
        return classification_arrays(results["results"])

    def status(self):
        """The model status JSON (`model_version_status`)."""
        return self._request("GET", self._model_path())

    def metadata(self):
        """The metadata JSON (`model_spec`, `metadata.signature_def`)."""
        return self._request("GET", self._model_path() + "/metadata")
