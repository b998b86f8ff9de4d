"""A local gRPC server that follows TensorFlow Serving's gRPC API.

`python -m serving.grpc_server --model_base_path DIR --model_name NAME
[--port 8500]` (or `--model_config_file models.config`, see `serving.flags`)
serves

- `PredictionService.Predict`: `TensorProto` inputs, run through the
  requested signature of the version that `model_spec` names (a version, a
  `version_label`, or the latest), `TensorProto` outputs (`output_filter`
  honoured);
- `PredictionService.Classify`: a `ClassificationRequest`'s examples (with
  or without a context) through a classify signature
  (`serving.classify`, after TF Serving's `classifier.cc`: "Missing
  ModelSpec", an unknown signature and a signature or outputs that cannot
  classify are INVALID_ARGUMENT), a `ClassificationResponse` with the
  signature actually run; `Regress` and `MultiInference` are UNIMPLEMENTED;
- `PredictionService.GetModelMetadata`: `metadata_field: "signature_def"` ->
  a `SignatureDefMap` packed in an `Any`;
- `ModelService.GetModelStatus`: every version with its state, as the REST
  status (`get_model_status_impl.cc`: "Missing ModelSpec" is
  INVALID_ARGUMENT, an unknown model or version NOT_FOUND).

Status codes follow TF Serving (`serving.predict`, `serving.models`): an
unknown model or version is NOT_FOUND, an unknown label INVALID_ARGUMENT, an
unknown signature FAILED_PRECONDITION; wrong input names, wrong dtypes,
unknown output aliases and inputs the graph rejects (e.g. token ids out of
range) are INVALID_ARGUMENT. The limits are the REST server's
(`serving.limits`): at most `max_concurrent` predictions and
classifications run (UNAVAILABLE
"server busy" beyond), each checked, run and turned into its response within
`request_timeout_s` or the client's deadline, whichever is shorter
(DEADLINE_EXCEEDED). Message sizes are set on purpose, not left at gRPC's
4 MiB default (TF Serving raises both to INT32_MAX, server.cc): a request
message up to `max_body_bytes` (REST's body limit, 1 MiB; gRPC answers
RESOURCE_EXHAUSTED past it) and an answer within `max_response_bytes` (the
REST budget, 16 MiB of tensor data, `serving.responses`; INVALID_ARGUMENT
with the sizes, before running when the signature's shapes tell, and before
any response is built). Messages are cleaned of stacks, node names and paths.

In process (tests): `server, port = make_grpc_server(model_dir, name, port=0)` (the
server is started), then `server.stop(None)`; `server.core.stop()` ends the
version polling.
"""

import argparse
import concurrent.futures
import errno
import logging

import grpc

from . import classify, flags, predict
from .limits import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    RequestLimiter,
)
from .models import DEFAULT_POLL_S
from .responses import DEFAULT_MAX_RESPONSE_BYTES, ResponseBudget
from .status import ServingError, invalid, public_message

logger = logging.getLogger(__name__)

# A response's envelope around its tensor data: model spec, keys, shapes.
_RESPONSE_ENVELOPE_BYTES = 64 << 10


def _model_spec(spec):
    """(name, version, label) of a ModelSpec."""
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _call(method, request, context):
    try:
        return method(request, context)
    except ServingError as error:
        code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)
        context.abort(code, public_message(error))
    except Exception:  # Never a traceback or a path in the answer.
        logger.exception("Internal error in %s", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, "Internal error.")


class PredictionServicer:
    """`PredictionService` over a `ServerCore` (Predict, GetModelMetadata)."""

    def __init__(self, core, limiter, budget=None, max_example_bytes=None):
        self.core = core
        self.limiter = limiter
        self.budget = budget or ResponseBudget(None, "proto")
        self.max_example_bytes = max_example_bytes

    def _predict(self, request, context):
        loaded = self.core.get(*_model_spec(request.model_spec))
        budget = self.budget

        def work():  # checked, run and made into a response within one slot
            signature_name, inputs, wanted = predict.check_request(request, loaded)
            budget.check_before_run(
                loaded, signature_name, inputs, output_names=set(wanted)
            )
            outputs = loaded.run(signature_name, inputs)
            outputs = {alias: outputs[alias] for alias in wanted}
            budget.check_outputs(outputs, loaded)
            return predict.make_response(
                request.model_spec.name, loaded, signature_name, outputs, wanted
            )

        return self.limiter.run(work, timeout_s=context.time_remaining())

    def Predict(self, request, context):  # noqa: N802
        return _call(self._predict, request, context)

    def _metadata(self, request, context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        loaded = self.core.get(*_model_spec(request.model_spec))
        fields = list(request.metadata_field)
        if not fields:
            raise invalid(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(loaded.signature_def_map())
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _call(self._metadata, request, context)

    def _classify(self, request, context):
        if not request.HasField("model_spec"):  # classification_service.cc
            raise invalid("Missing ModelSpec")
        loaded = self.core.get(*_model_spec(request.model_spec))

        def work():
            signature_name, result = classify.run_classify(
                request,
                loaded,
                method_name_check=self.core.signature_method_name_check,
                budget=self.budget,
                max_example_bytes=self.max_example_bytes,
            )
            return classify.make_response(
                request.model_spec.name, loaded, signature_name, result
            )

        return self.limiter.run(work, timeout_s=context.time_remaining())

    def Classify(self, request, context):  # noqa: N802
        return _call(self._classify, request, context)

    def _unimplemented(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Regress and MultiInference are not supported; use Predict or Classify.",
        )

    Regress = MultiInference = _unimplemented  # noqa: N815


class ModelServicer:
    """`ModelService.GetModelStatus` over a `ServerCore`."""

    def __init__(self, core):
        self.core = core

    def _status(self, request, context):
        from tensorflow_serving.apis import get_model_status_pb2

        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        name, version, _ = _model_spec(request.model_spec)  # Labels: as REST.
        response = get_model_status_pb2.GetModelStatusResponse()
        states = get_model_status_pb2.ModelVersionStatus.State
        for number, state, code, message in self.core.status(name, version):
            status = response.model_version_status.add(
                version=number, state=states.Value(state)
            )
            status.status.error_code = getattr(grpc.StatusCode, code).value[0]
            status.status.error_message = message
        return response

    def GetModelStatus(self, request, context):  # noqa: N802
        return _call(self._status, request, context)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "HandleReloadConfigRequest is not supported; restart with the new "
            "--model_config_file.",
        )


def make_grpc_server(
    base_path=None,
    model_name=None,
    host="127.0.0.1",
    port=0,
    max_concurrent=DEFAULT_MAX_CONCURRENT,
    request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    poll_s=DEFAULT_POLL_S,
    max_body_bytes=flags.DEFAULT_MAX_BODY_BYTES,
    max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
    start=True,
    core=None,
    **core_options,
):
    """(server, port): TF Serving's gRPC services for `base_path/model_name`.

    As `serving.server.make_server`: loads the model now (or serves `core`),
    polls for versions every `poll_s` seconds, and limits predictions to
    `max_concurrent` at a time within `request_timeout_s`, request messages
    to `max_body_bytes` and answers to `max_response_bytes`. The server is
    started unless `start=False`; `server.core` is the `ServerCore`. Raises
    OSError (the core released) if the address cannot be bound.
    """
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    owns_core = core is None
    if owns_core:
        core = flags.make_core(base_path, model_name, poll_s=poll_s, **core_options)
    limiter = RequestLimiter(max_concurrent, request_timeout_s)
    # Room for the metadata and status RPCs next to max_concurrent predictions;
    # gRPC itself answers RESOURCE_EXHAUSTED past maximum_concurrent_rpcs.
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent + 4, thread_name_prefix="grpc"
        ),
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            # The budget check answers first; this is gRPC's own backstop.
            (
                "grpc.max_send_message_length",
                min(max_response_bytes + _RESPONSE_ENVELOPE_BYTES, (1 << 31) - 1),
            ),
            # Without this a second server binds a busy port silently
            # (SO_REUSEPORT) and never sees a request.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=4 * (max_concurrent + 4),
    )
    budget = ResponseBudget(max_response_bytes, "proto")
    max_example_bytes = classify.EXAMPLE_BYTES_PER_BODY_BYTE * max_body_bytes
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core, limiter, budget, max_example_bytes), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(core), server
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # newer grpcio raises where older ones return 0
        bound = 0
    if not bound:  # release what was made for this server
        limiter.shutdown()
        if owns_core:
            core.stop()
        raise OSError(errno.EADDRINUSE, f"gRPC could not bind {host}:{port} (in use?)")
    server.core = core
    server.limiter = limiter
    if start:
        server.start()
    core.start_polling()
    return server, bound


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.grpc_server")
    flags.add_model_flags(parser)
    flags.add_endpoint_flags(parser, port=8500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    core = flags.core_from_args(args, parser)
    try:
        server, port = make_grpc_server(
            host=args.host,
            port=args.port,
            max_concurrent=args.max_concurrent,
            request_timeout_s=args.request_timeout_s,
            max_body_bytes=args.max_body_bytes,
            max_response_bytes=args.max_response_bytes,
            core=core,
        )
    except OSError as error:
        core.stop()
        parser.exit(1, flags.bind_failure(args.host, args.port, error))
    logger.info("gRPC at %s:%d (%s)", args.host, port, ", ".join(core.models))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=2).wait(5)
        server.core.stop()
        server.limiter.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
