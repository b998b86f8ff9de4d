"""Clients for the TF Serving-style REST and gRPC servers.

    from serving.client import RestClient, GrpcClient
    client = RestClient("http://127.0.0.1:8501", model_name="switch")
    client.predict({"token_ids": [[2, 10, 11]]})  # {"logits": ..., "next_token": ...}
    client.generate(["ROMEO:"], max_new_tokens=8, temperature=0.0)  # [str]
    client.route([[2, 10, 11]])  # {"expert": ..., "probability": ...}
    GrpcClient("127.0.0.1:8500", model_name="switch").predict(...)  # the same

Both clients read the signatures once (`metadata()`) and cast inputs to the
signature's dtypes where that loses nothing (ints to int32, numbers to
float32); anything else goes as given, and the server rejects it. Outputs are
numpy arrays; strings come back as bytes (`dtype=object`) from both clients.
A server error raises `ServingClientError(status, message)`: `status` is the
HTTP status (REST) or the gRPC status code name (gRPC).

Command line:
`python -m serving.client [--rest URL | --grpc TARGET] --model switch
{predict --token-ids 2,10,11 | generate --prompt "ROMEO:" [--max-new-tokens N]
[--temperature T] | route --token-ids ...}` prints JSON.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np

DEFAULT_SIGNATURE = "serving_default"

# DataType enum names -> numpy dtypes (the ones TF Serving's JSON handles).
_NUMPY = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": object,
}


class ServingClientError(Exception):
    """A server's error: `status` (HTTP status or gRPC code name), `message`."""

    def __init__(self, status, message):
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self):
        return f"{self.status}: {self.message}"


def _to_bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _cast(value, dtype_name):
    """`value` as a numpy array of the signature's dtype, when that loses nothing."""
    array = np.asarray(value)
    target = _NUMPY.get(dtype_name)
    if target is None:
        return array
    if target is object:
        if array.dtype.kind in "SUO":
            flat = [_to_bytes(item) for item in array.reshape(-1)]
            out = np.empty(len(flat), dtype=object)
            out[:] = flat
            return out.reshape(array.shape)
        return array
    kind = np.dtype(target).kind
    if kind in "iu" and array.dtype.kind in "iu":
        return array.astype(target)
    if kind == "f" and array.dtype.kind in "iuf":
        return array.astype(target)
    if kind == "b" and array.dtype.kind == "b":
        return array
    return array  # Sent as is: the server gives the error.


def _signature(metadata, signature_name):
    signatures = metadata.get("metadata", {}).get("signature_def", {})
    return signatures.get("signature_def", {}).get(signature_name)


def _generate_inputs(prompts, max_new_tokens, temperature):
    if isinstance(prompts, (str, bytes)):
        prompts = [prompts]
    prompts = list(prompts)
    size = len(prompts)
    prompt = np.empty(size, dtype=object)
    prompt[:] = [_to_bytes(p) for p in prompts]
    return {
        "prompt": prompt,
        "max_new_tokens": np.full(size, max_new_tokens, np.int32),
        "temperature": np.full(size, temperature, np.float32),
    }


def _texts(array):
    return [
        item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
        for item in np.asarray(array).reshape(-1)
    ]


class _Client:
    """predict/generate/route over `_predict` and `metadata`."""

    model_name = "switch"
    _metadata_cache = None

    def _signature_info(self, signature_name):
        if self._metadata_cache is None:
            self._metadata_cache = self.metadata()
        return _signature(self._metadata_cache, signature_name)

    def _cast_inputs(self, inputs, signature_name):
        try:
            signature = self._signature_info(signature_name)
        except ServingClientError:
            signature = None  # Let the predict call report the error.
        specs = (signature or {}).get("inputs", {})
        return {
            name: _cast(value, specs.get(name, {}).get("dtype"))
            for name, value in inputs.items()
        }

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE):
        """{output name: numpy array} of one signature on `inputs`."""
        return self._predict(self._cast_inputs(inputs, signature_name), signature_name)

    def generate(self, prompts, max_new_tokens=32, temperature=0.8):
        """The texts (prompt and continuation) for each prompt."""
        inputs = _generate_inputs(prompts, max_new_tokens, temperature)
        return _texts(self.predict(inputs, "generate")["text"])

    def route(self, token_ids):
        """{"expert": int32 [batch, length, layers], "probability": float32 ...}."""
        return self.predict({"token_ids": token_ids}, "route")


# --- REST -------------------------------------------------------------------------


def _json_value(array):
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
    target = _NUMPY.get(dtype_name)
    if target is object:

        def decode(item):
            if isinstance(item, dict) and "b64" in item:
                return base64.b64decode(item["b64"])
            return _to_bytes(item)

        array = np.asarray(value, dtype=object)
        if array.ndim == 0:
            return np.asarray(decode(array.item()), dtype=object)
        return np.vectorize(decode, otypes=[object])(array)
    return np.asarray(value, dtype=target)


class RestClient(_Client):
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
            "inputs": {name: _json_value(value) for name, value in inputs.items()},
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

    def status(self):
        """The model status JSON (`model_version_status`)."""
        return self._request("GET", self._model_path())

    def metadata(self):
        """The metadata JSON (`model_spec`, `metadata.signature_def`)."""
        return self._request("GET", self._model_path() + "/metadata")


# --- gRPC -------------------------------------------------------------------------


class GrpcClient(_Client):
    """A client of TF Serving's gRPC `PredictionService` and `ModelService`."""

    def __init__(self, target="127.0.0.1:8500", model_name="switch", timeout=10):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rpc(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from None

    def _predict(self, inputs, signature_name, output_filter=()):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        request.output_filter.extend(output_filter)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._rpc(self._stub.Predict, request)
        return {
            name: tf.make_ndarray(proto) for name, proto in response.outputs.items()
        }

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE, output_filter=()):
        """{output name: numpy array}; `output_filter` selects outputs."""
        return self._predict(
            self._cast_inputs(inputs, signature_name), signature_name, output_filter
        )

    def status(self):
        """`ModelService.GetModelStatus` in the REST JSON shape."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        response = self._rpc(stub.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        codes = {code.value[0]: code.name for code in grpc.StatusCode}
        return {
            "model_version_status": [
                {
                    "version": str(entry.version),
                    "state": states.Name(entry.state),
                    "status": {
                        "error_code": codes.get(entry.status.error_code, "UNKNOWN"),
                        "error_message": entry.status.error_message,
                    },
                }
                for entry in response.model_version_status
            ]
        }

    def metadata(self):
        """The metadata in the REST JSON shape (`metadata.signature_def`)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append("signature_def")
        response = self._rpc(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "model_spec": {
                "name": response.model_spec.name,
                "signature_name": "",
                "version": str(response.model_spec.version.value),
            },
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True
                )
            },
        }


# --- Command line -------------------------------------------------------------------


def _ids(text):
    try:
        return [[int(item) for item in text.split(",") if item.strip()]]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--token-ids wants comma-separated integers, got {text!r}"
        ) from None


def _jsonable(outputs):
    return {name: _json_value(value) for name, value in sorted(outputs.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.client")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", metavar="URL", help="default http://127.0.0.1:8501")
    where.add_argument("--grpc", metavar="TARGET", help="e.g. 127.0.0.1:8500")
    parser.add_argument("--model", default="switch")
    parser.add_argument("--timeout", type=float, default=10)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("predict", "route"):
        command = commands.add_parser(name)
        command.add_argument("--token-ids", type=_ids, required=True)
    command = commands.add_parser("generate")
    command.add_argument("--prompt", action="append", required=True)
    command.add_argument("--max-new-tokens", type=int, default=32)
    command.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args(argv)

    if args.grpc:
        client = GrpcClient(args.grpc, model_name=args.model, timeout=args.timeout)
    else:
        url = args.rest or "http://127.0.0.1:8501"
        client = RestClient(url, model_name=args.model, timeout=args.timeout)
    try:
        if args.command == "predict":
            result = _jsonable(client.predict({"token_ids": args.token_ids}))
        elif args.command == "route":
            result = _jsonable(client.route(args.token_ids))
        else:
            texts = client.generate(
                args.prompt,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
            )
            result = {"text": texts}
    except ServingClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # Connection refused, timeouts.
        print(f"error: cannot reach the server: {error}", file=sys.stderr)
        return 2
    finally:
        if isinstance(client, GrpcClient):
            client.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
