"""The gRPC server's limits and codes, against a real grpc server on 127.0.0.1."""

import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import server as server_lib
from serving.grpc_server import make_grpc_server
from tests.serving.grpc_requests import predict_request
from tests.serving.rest import NAME, TIMEOUT, predict
from tests.tiny_export import random_token_ids


class _Grpc:
    def __init__(self, base, **kwargs):
        self.server, self.port = make_grpc_server(
            base, NAME, port=0, poll_s=0, **kwargs
        )
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}",
            options=[("grpc.max_receive_message_length", -1)],  # client side
        )
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()
        self.server.stop(None).wait(5)
        self.server.core.stop()
        self.server.limiter.shutdown()


@pytest.fixture(scope="module")
def served(exported):
    served = _Grpc(exported["model_dir"], max_concurrent=2)
    yield served
    served.close()


def _error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return info.value.code(), info.value.details()


def _healthy(served):
    response = served.predict.Predict(
        predict_request(token_ids=random_token_ids(1, 4)), timeout=TIMEOUT
    )
    assert response.model_spec.version.value == 1
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = NAME
    (entry,) = served.model.GetModelStatus(status, timeout=TIMEOUT).model_version_status
    return entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_saturated_server_is_unavailable_like_rest(served, exported):
    # The REST server's limit and answer: UNAVAILABLE (503), "server busy".
    rest = server_lib.make_server(
        exported["model_dir"], NAME, port=0, poll_s=0, max_concurrent=2
    )
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    limiters = [served.server.limiter, rest.limiter]
    held = [lim.slots.acquire(blocking=False) for lim in limiters for _ in range(2)]
    try:
        assert all(held)
        request = predict_request(token_ids=random_token_ids(1, 4))
        code, message = _error(served.predict.Predict, request)
        assert code == grpc.StatusCode.UNAVAILABLE
        status, body = predict(rest, {"instances": random_token_ids(1, 4).tolist()})
        assert status == 503 and body == {"error": message}
        assert message == "server busy; retry later."
    finally:
        for lim in limiters:
            for _ in range(2):
                lim.slots.release()
        rest.shutdown()
        rest.server_close()
    assert _healthy(served)


def test_past_the_deadline_is_deadline_exceeded(exported):
    slow = _Grpc(exported["model_dir"], request_timeout_s=1e-4)
    try:
        request = predict_request(
            "generate",
            prompt=np.array([b"The king"], object),
            max_new_tokens=np.array([8], np.int32),
            temperature=np.array([0.0], np.float32),
            top_k=np.array([0], np.int32),
            top_p=np.array([1.0], np.float32),
            seed=np.array([0], np.int32),
        )
        code, message = _error(slow.predict.Predict, request)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert message.startswith("Request took longer than")
        # The status RPC is not a prediction: it still answers.
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = NAME
        assert slow.model.GetModelStatus(status, timeout=TIMEOUT).model_version_status
    finally:
        slow.close()


def test_a_client_deadline_leaves_the_server_healthy(served):
    # The server runs within the client's deadline when it is the shorter
    # (serving.limits; see test_limits.py for the timing itself).
    request = predict_request(
        "generate",
        prompt=np.array([b"The king"] * 4, object),
        max_new_tokens=np.array([8] * 4, np.int32),
        temperature=np.array([0.0] * 4, np.float32),
        top_k=np.array([0] * 4, np.int32),
        top_p=np.array([1.0] * 4, np.float32),
        seed=np.array([0] * 4, np.int32),
    )
    with pytest.raises(grpc.RpcError) as info:
        served.predict.Predict(request, timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _healthy(served)


def test_invalid_argument_and_not_found(served, exported):
    ids = random_token_ids(1, 4)
    cases = [
        (
            predict_request(token_ids=ids.astype(np.float32)),
            "INVALID_ARGUMENT",
            "int32",
        ),
        (predict_request(tokens=ids), "INVALID_ARGUMENT", "token_ids"),
        (
            predict_request(token_ids=np.array([[5, -1]], np.int32)),
            "INVALID_ARGUMENT",
            "",
        ),
        (
            predict_request(
                token_ids=np.array([[5, exported["vocab_size"]]], np.int32)
            ),
            "INVALID_ARGUMENT",
            "",
        ),
        (predict_request("nope", token_ids=ids), "FAILED_PRECONDITION", "nope"),
    ]
    malformed = predict_request(token_ids=ids)
    malformed.inputs["token_ids"].tensor_content = b"\x01\x02\x03"
    cases.append((malformed, "INVALID_ARGUMENT", "malformed TensorProto"))
    version = predict_request(token_ids=ids)
    version.model_spec.version.value = 3
    cases.append((version, "NOT_FOUND", f"Specific({NAME}, 3)"))
    for request, code, text in cases:
        got, message = _error(served.predict.Predict, request)
        assert got.name == code and text in message, (code, message)
        assert "Traceback" not in message and exported["base"] not in message
    assert _healthy(served)
