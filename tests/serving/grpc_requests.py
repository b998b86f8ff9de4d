"""gRPC `PredictRequest`s for the serving tests."""

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.serving.rest import NAME


def predict_request(signature="serving_default", model=NAME, **inputs):
    """A `PredictRequest` for `model`'s `signature` with NumPy `inputs`."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request
