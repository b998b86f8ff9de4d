"""`GrpcClient`: TF Serving's gRPC `PredictionService` and `ModelService`.

grpc, TensorFlow and the TF Serving protos are imported on first use, so
`import serving.client` stays light for REST-only callers.
"""

from .client_base import (
    DEFAULT_SIGNATURE,
    BaseClient,
    ServingClientError,
    classification_arrays,
)


class GrpcClient(BaseClient):
    """A client of TF Serving's gRPC `PredictionService` and `ModelService`."""

    def __init__(
        self,
        target="127.0.0.1:8500",
        model_name="switch",
        timeout=10,
        max_receive_message_bytes=(1 << 31) - 1,
    ):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        # gRPC's client default is 4 MiB; TF Serving sends up to INT32_MAX and
        # the local server up to its --max_response_bytes.
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", max_receive_message_bytes)],
        )
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

    def _classify(self, examples, context, signature_name):
        from tensorflow_serving.apis import classification_pb2

        from .json_classify import fill_example
        from .status import ServingError

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name or ""
        try:  # The examples typed as TF Serving types the REST API's JSON.
            if context is None:
                target = request.input.example_list.examples
            else:
                with_context = request.input.example_list_with_context
                with_context.context.SetInParent()
                fill_example(context, with_context.context)
                target = with_context.examples
            for example in examples:
                fill_example(example, target.add())
        except ServingError as error:
            raise ServingClientError(error.code, error.message) from None
        response = self._rpc(self._stub.Classify, request)
        return classification_arrays(
            [
                [(item.label, item.score) for item in classifications.classes]
                for classifications in response.result.classifications
            ]
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
