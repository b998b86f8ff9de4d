"""gRPC `PredictRequest`s for the serving tests."""

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.serving.rest import NAME


def predict_request(
    signature="serving_default", model=NAME, version=None, version_label=None, **inputs
):
    """A `PredictRequest` for `model`'s `signature` with NumPy `inputs`, at a
    `version` or a `version_label` when given."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if version_label is not None:
        request.model_spec.version_label = version_label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request
