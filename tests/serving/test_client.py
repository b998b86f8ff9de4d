"""REST and gRPC clients against the local servers, over 127.0.0.1 only."""

import contextlib
import io
import json

import grpc
import numpy as np
import pytest
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    prediction_service_pb2_grpc,
)

from serving import client as client_lib
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.grpc_server import make_grpc_server
from tests.serving.grpc_requests import predict_request
from tests.serving.rest import NAME, TIMEOUT
from tests.tiny_export import (
    random_token_ids,
    run_in_process,
)


@pytest.fixture(scope="module")
def rest_url(server):
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


@pytest.fixture(scope="module")
def grpc_target(exported):
    server, port = make_grpc_server(exported["model_dir"], NAME, port=0, poll_s=0)
    yield f"127.0.0.1:{port}"
    server.stop(None).wait(5)
    server.core.stop()
    server.limiter.shutdown()


@pytest.fixture(scope="module")
def clients(rest_url, grpc_target):
    grpc_client = GrpcClient(grpc_target, model_name=NAME, timeout=TIMEOUT)
    yield {
        "rest": RestClient(rest_url, model_name=NAME, timeout=TIMEOUT),
        "grpc": grpc_client,
    }
    grpc_client.close()


@pytest.fixture(scope="module")
def stub(grpc_target):
    channel = grpc.insecure_channel(grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_predict_matches_the_saved_model(clients, exported, kind):
    ids = random_token_ids(2, 6)
    expected = run_in_process(exported["loaded"], "serving_default", token_ids=ids)
    # A plain list (int64 once in numpy) is cast to the signature's int32.
    outputs = clients[kind].predict({"token_ids": ids.tolist()})
    assert sorted(outputs) == ["logits", "next_token"]
    assert outputs["logits"].dtype == np.float32
    assert outputs["logits"].shape == expected["logits"].shape
    np.testing.assert_allclose(
        outputs["logits"], expected["logits"], rtol=1e-5, atol=1e-6
    )
    assert outputs["next_token"].dtype == np.int32
    np.testing.assert_array_equal(outputs["next_token"], expected["next_token"])


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_route_matches_the_saved_model(clients, exported, kind):
    ids = random_token_ids(2, 5, seed=3)
    expected = run_in_process(exported["loaded"], "route", token_ids=ids)
    outputs = clients[kind].route(ids)
    assert sorted(outputs) == ["expert", "probability"]
    np.testing.assert_array_equal(outputs["expert"], expected["expert"])
    np.testing.assert_allclose(
        outputs["probability"], expected["probability"], rtol=1e-6
    )


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_generate_matches_the_saved_model(clients, exported, kind):
    prompts = ["The king", "A fool loves"]
    expected = run_in_process(
        exported["loaded"],
        "generate",
        prompt=np.array(prompts, object),
        max_new_tokens=np.array([3, 3], np.int32),
        temperature=np.array([0.8, 0.8], np.float32),
        top_k=np.array([5, 5], np.int32),
        top_p=np.array([0.9, 0.9], np.float32),
        seed=np.array([4, 4], np.int32),
    )
    outputs = clients[kind].generate_outputs(
        prompts, max_new_tokens=3, temperature=0.8, top_k=5, top_p=0.9, seed=4
    )
    assert sorted(outputs) == ["expert", "text", "token_ids"]
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
    texts = clients[kind].generate(prompts, max_new_tokens=3, temperature=0.0)
    # A single prompt string is a batch of one.
    assert clients[kind].generate("The king", max_new_tokens=3, temperature=0) == [
        texts[0]
    ]


def test_metadata_and_status_agree(clients):
    rest, grpc_meta = clients["rest"].metadata(), clients["grpc"].metadata()
    assert rest == grpc_meta
    signatures = rest["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["generate", "next_token", "route", "serving_default"]
    status = clients["rest"].status()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert clients["grpc"].status() == status  # ModelService.GetModelStatus


def test_grpc_output_filter(clients, exported):
    ids = random_token_ids(1, 4, seed=5)
    expected = run_in_process(exported["loaded"], "serving_default", token_ids=ids)
    outputs = clients["grpc"].predict({"token_ids": ids}, output_filter=["next_token"])
    assert sorted(outputs) == ["next_token"]
    np.testing.assert_array_equal(outputs["next_token"], expected["next_token"])
    with pytest.raises(ServingClientError) as info:
        clients["grpc"].predict({"token_ids": ids}, output_filter=["nope"])
    assert info.value.status == "INVALID_ARGUMENT"


def _code(stub, request):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=TIMEOUT)
    return info.value.code(), info.value.details()


def test_grpc_errors(stub, exported):
    ids = random_token_ids(1, 4)
    code, message = _code(stub, predict_request(model="nope", token_ids=ids))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in message
    bad = ids.copy()
    bad[0, 1] = exported["vocab_size"] + 7
    code, message = _code(stub, predict_request(token_ids=bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in message and ".py" not in message and "node" not in message
    # TF Serving's predict_util.cc: an unknown signature is FAILED_PRECONDITION.
    code, message = _code(stub, predict_request(signature="nope", token_ids=ids))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "nope" in message
    code, message = _code(stub, predict_request(tokens=ids))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "token_ids" in message
    code, message = _code(stub, predict_request(token_ids=ids.astype(np.int64)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "int32" in message
    # The metadata RPC: a packed SignatureDefMap; other fields are refused.
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = NAME
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert "route" in signature_map.signature_def
    assert response.model_spec.version.value == 1
    request.metadata_field[0] = "nope"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_client_errors(clients, exported):
    bad = random_token_ids(1, 4)
    bad[0, 0] = exported["vocab_size"] + 3
    with pytest.raises(ServingClientError) as info:
        clients["rest"].predict({"token_ids": bad})
    assert info.value.status == 400 and info.value.message
    assert "Traceback" not in info.value.message
    with pytest.raises(ServingClientError) as info:
        RestClient(clients["rest"].url, model_name="nope").status()
    assert info.value.status == 404
    with pytest.raises(ServingClientError) as info:
        clients["grpc"].predict({"token_ids": bad})
    assert info.value.status == "INVALID_ARGUMENT"


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = client_lib.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli(rest_url, grpc_target, clients, exported):
    expected = clients["rest"].generate_outputs(
        ["ROMEO:"], max_new_tokens=4, temperature=0.5, top_k=3, seed=2
    )
    argv = ["--rest", rest_url, "--model", NAME, "generate", "--prompt", "ROMEO:"]
    options = ["--temperature", "0.5", "--top-k", "3", "--seed", "2"]
    code, out, _ = _cli(argv + ["--max-new-tokens", "4", *options])
    assert code == 0
    assert json.loads(out) == {
        "expert": expected["expert"].tolist(),
        "text": [expected["text"][0].decode()],
        "token_ids": expected["token_ids"].tolist(),
    }
    code, out, _ = _cli(["--grpc", grpc_target, "predict", "--token-ids", "2,10,11"])
    assert code == 0
    body = json.loads(out)
    assert sorted(body) == ["logits", "next_token"]
    assert np.asarray(body["logits"]).shape == (1, 3, exported["vocab_size"])
    code, out, _ = _cli(["--rest", rest_url, "route", "--token-ids", "2,10,11"])
    assert code == 0 and sorted(json.loads(out)) == ["expert", "probability"]
    code, out, err = _cli(["--rest", rest_url, "predict", "--token-ids", "2,9999"])
    assert code == 1 and out == "" and err.startswith("error: 400")
