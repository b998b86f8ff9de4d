"""A local gRPC server that follows TensorFlow Serving's `PredictionService`.

`python -m serving.grpc_server --model_base_path BASE --model_name NAME
[--port 8500]` serves the highest integer version under `BASE/NAME` with

- `Predict`: `TensorProto` inputs, run through the requested signature of the
  served version, `TensorProto` outputs (`output_filter` honoured);
- `GetModelMetadata`: `metadata_field: "signature_def"` -> a `SignatureDefMap`
  packed in an `Any`.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND, an
unknown signature is FAILED_PRECONDITION (as `predict_util.cc` and
`serving.fidelity` give it), wrong input names, wrong dtypes, unknown output
aliases and inputs the graph rejects (e.g. token ids out of range) are
INVALID_ARGUMENT. Messages are cleaned of stacks, node names and paths.

The loading and version code is `serving.server`'s `ModelManager`.

In process (tests): `server, port = make_grpc_server(base, name, port=0)` (the
server is started), then `server.stop(None)`; `server.manager.stop()` ends the
version polling.
"""

import argparse
import concurrent.futures
import logging

import grpc
import numpy as np

from serving.fidelity import DEFAULT_SIGNATURE, ServingError
from serving.server import DEFAULT_POLL_S, ModelManager

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 4
# A little over the REST server's 1 MiB body limit: tensors travel packed.
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20

_CLIENT_CODES = frozenset(
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"]
    + ["RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"]
)


def _invalid(message):
    return ServingError("INVALID_ARGUMENT", message)


def _version(model_spec):
    return model_spec.version.value if model_spec.HasField("version") else None


def _to_array(name, proto, expected_dtype):
    """A request TensorProto as a numpy array, checked against the signature."""
    import tensorflow as tf

    try:
        given = tf.as_dtype(proto.dtype)
    except (TypeError, ValueError):
        raise _invalid(f"input '{name}': unknown dtype enum {proto.dtype}.") from None
    if given.name != expected_dtype:
        raise _invalid(
            f"input '{name}': expects {expected_dtype} but {given.name} is provided."
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # A malformed proto (content size, shape).
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _invalid(f"input '{name}': malformed TensorProto: {message}") from None


class PredictionServicer:
    """`PredictionService` over one `ModelManager` (Predict, GetModelMetadata)."""

    def __init__(self, manager):
        self.manager = manager

    # --- Predict ------------------------------------------------------------

    def _predict(self, request):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        loaded = self.manager.get(spec.name, _version(spec))
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        if signature_name not in loaded.signature_defs:
            raise ServingError(
                "FAILED_PRECONDITION",
                f'Serving signature key "{signature_name}" not found.',
            )
        signature = loaded.signature_defs[signature_name]
        dtypes = loaded.input_dtypes(signature_name)
        names = sorted(request.inputs)
        if names != sorted(dtypes):
            extra = sorted(set(names) - set(dtypes))
            missing = sorted(set(dtypes) - set(names))
            raise _invalid(
                f"input names do not match the signature: expected {sorted(dtypes)}; "
                f"unknown {extra}; missing {missing}."
            )
        wanted = list(request.output_filter) or sorted(signature.outputs)
        for alias in wanted:
            if alias not in signature.outputs:
                raise _invalid(f"output tensor alias not found in signature: {alias}")
        if len(set(wanted)) != len(wanted):
            raise _invalid("duplicate output tensor alias in output_filter.")
        inputs = {
            name: _to_array(name, request.inputs[name], dtypes[name]) for name in names
        }
        outputs = loaded.run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for alias in wanted:
            response.outputs[alias].CopyFrom(
                tf.make_tensor_proto(np.asarray(outputs[alias]))
            )
        return response

    def Predict(self, request, context):  # noqa: N802
        return self._call(self._predict, request, context)

    # --- GetModelMetadata -----------------------------------------------------

    def _metadata(self, request):
        from tensorflow_serving.apis import get_model_metadata_pb2

        spec = request.model_spec
        loaded = self.manager.get(spec.name, _version(spec))
        fields = list(request.metadata_field)
        if not fields:
            raise _invalid(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != "signature_def":
                raise _invalid(f"Metadata field {field} is not supported")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self._call(self._metadata, request, context)

    # --- Unsupported ------------------------------------------------------------

    def _unimplemented(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Classify, Regress and MultiInference are not supported; use Predict.",
        )

    Classify = Regress = MultiInference = _unimplemented  # noqa: N815

    # --- Errors -----------------------------------------------------------------

    def _call(self, method, request, context):
        try:
            return method(request)
        except ServingError as error:
            code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)
            message = error.message if error.code in _CLIENT_CODES else None
            context.abort(code, message or "Internal error.")
        except Exception:  # Never a traceback or a path in the answer.
            logger.exception("Internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "Internal error.")


def make_grpc_server(
    base_path,
    model_name,
    host="127.0.0.1",
    port=0,
    max_workers=DEFAULT_MAX_WORKERS,
    poll_s=DEFAULT_POLL_S,
    max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
    start=True,
):
    """(server, port): a gRPC PredictionService for `base_path/model_name`.

    Loads the highest version now; with `poll_s` (seconds, 0 or None to
    disable) a thread swaps in newer versions. The server is started unless
    `start=False`; `server.manager` is the `ModelManager`.
    """
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    manager = ModelManager(base_path, model_name, poll_s=poll_s)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="grpc-predict"
        ),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=4 * max_workers,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        manager.stop()
        raise OSError(f"Could not bind a gRPC port at {host}:{port}.")
    server.manager = manager
    if start:
        server.start()
    manager.start_polling()
    return server, bound


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.grpc_server")
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max_workers", type=int, default=DEFAULT_MAX_WORKERS)
    parser.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=DEFAULT_POLL_S
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server, port = make_grpc_server(
        args.model_base_path,
        args.model_name,
        host=args.host,
        port=args.port,
        max_workers=args.max_workers,
        poll_s=args.file_system_poll_wait_seconds,
    )
    logger.info(
        "gRPC PredictionService at %s:%d (%s)", args.host, port, args.model_name
    )
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=2).wait(5)
        server.manager.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
