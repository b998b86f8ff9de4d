"""The gRPC server's message limits (issue 13 items 6 and 8): answers past
gRPC's 4 MiB default, the same budgets as REST, and a busy port, on
127.0.0.1."""

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving.grpc_server import make_grpc_server
from tests.serving.grpc_requests import predict_request
from tests.serving.rest import NAME, TIMEOUT
from tests.serving.test_grpc_server import _Grpc
from tests.tiny_export import LENGTH, random_token_ids

ROW_BYTES = LENGTH * 108 * 4  # one row of the tiny export's float32 logits


@pytest.fixture(scope="module")
def served(exported):
    served = _Grpc(exported["model_dir"], max_concurrent=2)
    yield served
    served.close()


def test_an_answer_over_4_mib_comes_back(served):
    # 900 full rows of logits, 4.7 MB: gRPC's default 4 MiB send limit
    # failed it with RESOURCE_EXHAUSTED "Sent message larger than max".
    rows = 900
    assert rows * ROW_BYTES > 4 << 20
    ids = random_token_ids(rows, LENGTH)
    response = served.predict.Predict(predict_request(token_ids=ids), timeout=TIMEOUT)
    logits = tf.make_ndarray(response.outputs["logits"])
    assert logits.shape == (rows, LENGTH, 108)


def test_the_budgets_are_the_rest_servers(exported):
    served = _Grpc(
        exported["model_dir"],
        max_body_bytes=64 << 10,
        max_response_bytes=100 * ROW_BYTES,
    )
    try:
        ids = random_token_ids(200, LENGTH)  # 9.6 kB in, 1 MB of logits out
        with pytest.raises(grpc.RpcError) as info:
            served.predict.Predict(predict_request(token_ids=ids), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = info.value.details()
        assert "logits [200, 12, 108] float32" in details
        assert "(--max_response_bytes)" in details
        assert "the request was not run" in details
        # Asking only for next_token (output_filter) fits.
        request = predict_request(token_ids=ids)
        request.output_filter.append("next_token")
        response = served.predict.Predict(request, timeout=TIMEOUT)
        assert tf.make_ndarray(response.outputs["next_token"]).shape == (200,)
        # A request message over max_body_bytes: gRPC's own RESOURCE_EXHAUSTED.
        big = np.full((2000, LENGTH), 5, np.int32)  # 96 kB
        with pytest.raises(grpc.RpcError) as info:
            served.predict.Predict(predict_request(token_ids=big), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        served.close()


def test_a_busy_port_is_refused(served, exported):
    # gRPC's SO_REUSEPORT let a second server bind the port silently.
    with pytest.raises(OSError, match="could not bind"):
        make_grpc_server(exported["model_dir"], NAME, port=served.port, poll_s=0)


def test_the_grpc_client_takes_answers_over_4_mib(served):
    from serving.grpc_client import GrpcClient

    with GrpcClient(f"127.0.0.1:{served.port}", NAME, timeout=TIMEOUT) as client:
        outputs = client.predict({"token_ids": random_token_ids(900, LENGTH)})
    assert outputs["logits"].shape == (900, LENGTH, 108)
