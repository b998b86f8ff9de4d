"""gRPC requests (`PredictRequest`s, model specs) for the serving tests."""

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.serving.rest import NAME


def fill_model_spec(spec, model, signature, version=None, version_label=None):
    """Sets a request's `ModelSpec`: name, signature, and a version or a
    version label when given."""
    spec.name = model
    spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    if version_label is not None:
        spec.version_label = version_label


def predict_request(
    signature="serving_default", model=NAME, version=None, version_label=None, **inputs
):
    """A `PredictRequest` for `model`'s `signature` with NumPy `inputs`, at a
    `version` or a `version_label` when given."""
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, signature, version, version_label)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request
