"""A `PredictRequest` run on a loaded version, checked as TF Serving checks it.

Shared by the gRPC `Predict` and by the warmup replay (both take a
`tensorflow_serving.apis.predict_pb2.PredictRequest`). The checks and codes
follow `predict_util.cc`: an unknown signature is FAILED_PRECONDITION; wrong
input names, a dtype that differs from the signature's (never a cast), a
malformed TensorProto and unknown or repeated `output_filter` aliases are
INVALID_ARGUMENT; what the graph rejects keeps the graph's code.
"""

import numpy as np

from .saved_model import DEFAULT_SIGNATURE
from .status import ServingError, invalid


def _to_array(name, proto, expected_dtype):
    """A request TensorProto as a numpy array, checked against the signature."""
    import tensorflow as tf

    try:
        given = tf.as_dtype(proto.dtype)
    except (TypeError, ValueError):
        raise invalid(f"input '{name}': unknown dtype enum {proto.dtype}.") from None
    if given.name != expected_dtype:
        raise invalid(
            f"input '{name}': expects {expected_dtype} but {given.name} is provided."
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # A malformed proto (content size, shape).
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise invalid(f"input '{name}': malformed TensorProto: {message}") from None


def check_request(request, loaded):
    """(signature name, numpy inputs, output aliases) of a `PredictRequest`."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
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
        raise invalid(
            f"input names do not match the signature: expected {sorted(dtypes)}; "
            f"unknown {extra}; missing {missing}."
        )
    wanted = list(request.output_filter) or sorted(signature.outputs)
    for alias in wanted:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias}")
    if len(set(wanted)) != len(wanted):
        raise invalid("duplicate output tensor alias in output_filter.")
    inputs = {
        name: _to_array(name, request.inputs[name], dtypes[name]) for name in names
    }
    return signature_name, inputs, wanted


def make_response(model_name, loaded, signature_name, outputs, wanted):
    """The `PredictResponse` of a run: the wanted outputs as TensorProtos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = signature_name
    for alias in wanted:
        response.outputs[alias].CopyFrom(
            tf.make_tensor_proto(np.asarray(outputs[alias]))
        )
    return response


def run_request(request, loaded, run=None):
    """Checks and runs a `PredictRequest` on `loaded`; returns the response.

    `run(loaded.run, signature_name, inputs)` runs the signature (default:
    directly; the servers pass their limiter's `run`).
    """
    signature_name, inputs, wanted = check_request(request, loaded)
    if run is None:
        outputs = loaded.run(signature_name, inputs)
    else:
        outputs = run(loaded.run, signature_name, inputs)
    return make_response(
        request.model_spec.name, loaded, signature_name, outputs, wanted
    )
