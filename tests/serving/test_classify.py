"""TF Serving's Classify in the local servers: REST `:classify` and gRPC
`Classify`, end to end on 127.0.0.1 (serving/classify.py,
serving/json_classify.py; the fixtures are tests/serving/classify_models.py).

Expected messages are TF Serving's own (classifier.cc, util.cc,
json_tensor.cc, classification_service.cc)."""

import json
import math
import os
import types

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import classify, flags, warmup
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.client import main as client_main
from serving.grpc_server import make_grpc_server
from serving.json_classify import classification_pieces, float32_text, parse_classify
from serving.status import ServingError
from tests.serving.classify_models import WIDE_CLASSES, save_classifier, serialized
from tests.serving.grpc_requests import fill_model_spec
from tests.serving.rest import TIMEOUT, request
from tests.serving.rest_server import start_server, stop_server

MODEL = "clf"
PATH = f"/v1/models/{MODEL}:classify"
MAX_BODY = 64 << 10  # so the merged examples may take 1 MiB
MAX_RESPONSE = 64 << 10


def _classify_log(signature, *examples):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = signature
    for example in examples:
        request.input.example_list.examples.add().ParseFromString(example)
    return prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )


def _write_warmup(export_dir, logs):
    path = os.path.join(export_dir, warmup.WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """clf/1 (bias 10) and clf/2 (bias 0, with a classify warmup record),
    labels stable -> 1 and canary -> 2."""
    base = tmp_path_factory.mktemp("classify")
    save_classifier(base / MODEL / "1", bias=10.0)
    save_classifier(base / MODEL / "2")
    _write_warmup(base / MODEL / "2", [_classify_log("classify", serialized(x=[1.0]))])
    config = base / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: '
        f'"{base / MODEL}" model_platform: "tensorflow" model_version_policy '
        "{ specific { versions: 1 versions: 2 } } "
        'version_labels { key: "stable" value: 1 } '
        'version_labels { key: "canary" value: 2 } } }'
    )
    return base


@pytest.fixture(scope="module")
def core(model_dir):
    core = flags.make_core(model_config_file=str(model_dir / "models.config"), poll_s=0)
    yield core
    core.stop()


@pytest.fixture(scope="module")
def rest(core):
    server = start_server(
        core=core, max_body_bytes=MAX_BODY, max_response_bytes=MAX_RESPONSE
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def grpc_served(core):
    server, port = make_grpc_server(
        core=core, port=0, max_body_bytes=MAX_BODY, max_response_bytes=MAX_RESPONSE
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    served = types.SimpleNamespace(
        server=server,
        port=port,
        stub=prediction_service_pb2_grpc.PredictionServiceStub(channel),
    )
    yield served
    channel.close()
    server.stop(None).wait(5)
    server.limiter.shutdown()


def _post(rest, body, path=PATH, raw=None):
    return request(rest, "POST", path, body=body, raw=raw)


def _grpc_request(examples, context=None, signature="", version=None, label=None):
    """A ClassificationRequest of serialized examples (and context)."""
    req = classification_pb2.ClassificationRequest()
    fill_model_spec(req.model_spec, MODEL, signature, version, label)
    if context is None:
        target = req.input.example_list.examples
    else:
        req.input.example_list_with_context.context.ParseFromString(context)
        target = req.input.example_list_with_context.examples
    for example in examples:
        target.add().ParseFromString(example)
    return req


def _grpc_results(response):
    return [
        [[item.label, item.score] for item in classifications.classes]
        for classifications in response.result.classifications
    ]


def _grpc_error(grpc_served, req, method="Classify"):
    with pytest.raises(grpc.RpcError) as info:
        getattr(grpc_served.stub, method)(req, timeout=TIMEOUT)
    return info.value.code(), info.value.details()


# --- Results ----------------------------------------------------------------------


def test_features_are_typed_as_json_and_the_context_is_merged(rest):
    status, body = _post(
        rest,
        {
            "examples": [
                {"x": 1.5, "color": "red", "tags": ["a", {"b64": "aGVsbG8="}]},
                {"n": 3, "tags": []},
                {"n": True},
            ]
        },
    )
    assert status == 200, body
    assert body == {
        "results": [
            [["red", 1.5], ["n", 0.0], ["tags", 2.0]],
            [["none", 0.0], ["n", 3.0], ["tags", 0.0]],
            [["none", 0.0], ["n", 1.0], ["tags", 0.0]],
        ]
    }
    # The context's features go into every example; an example's own wins.
    status, body = _post(
        rest,
        {
            "context": {"color": "blue", "x": 0.25},
            "examples": [{"x": 2.0}, {"color": "green", "tags": "solo"}],
        },
    )
    assert status == 200, body
    assert body["results"] == [
        [["blue", 2.0], ["n", 0.0], ["tags", 0.0]],
        [["green", 0.25], ["n", 0.0], ["tags", 1.0]],
    ]


def test_grpc_classify_matches_rest_and_names_what_ran(rest, grpc_served):
    context = serialized(color=[b"blue"], x=[0.25])
    examples = [serialized(x=[2.0]), serialized(color=[b"green"], tags=[b"solo"])]
    response = grpc_served.stub.Classify(
        _grpc_request(examples, context), timeout=TIMEOUT
    )
    # MakeModelSpec: an empty signature name is answered as serving_default.
    assert response.model_spec.name == MODEL
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 2
    _, body = _post(
        rest,
        {
            "context": {"color": "blue", "x": 0.25},
            "examples": [{"x": 2.0}, {"color": "green", "tags": "solo"}],
        },
    )
    assert _grpc_results(response) == body["results"]


def test_one_output_leaves_empty_labels_or_zero_scores(rest, grpc_served):
    body = {"signature_name": "scores_only", "examples": [{"x": 1.5}]}
    assert _post(rest, body) == (200, {"results": [[["", 1.5], ["", 0.0], ["", 0.0]]]})
    body = {"signature_name": "classes_only", "examples": [{"color": "red"}]}
    expected = {"results": [[["red", 0.0], ["n", 0.0], ["tags", 0.0]]]}
    assert _post(rest, body) == (200, expected)
    req = _grpc_request([serialized(x=[1.5])], signature="scores_only")
    response = grpc_served.stub.Classify(req, timeout=TIMEOUT)
    assert _grpc_results(response) == [[["", 1.5], ["", 0.0], ["", 0.0]]]
    assert response.model_spec.signature_name == "scores_only"


def test_versions_and_labels(rest, grpc_served):
    body = {"examples": [{"x": 1.0}]}

    def score(path):
        status, answer = _post(rest, body, path)
        assert status == 200, answer
        return answer["results"][0][0][1]

    assert score(PATH) == 1.0  # the latest version, 2 (bias 0)
    assert score(f"/v1/models/{MODEL}/versions/1:classify") == 11.0
    assert score(f"/v1/models/{MODEL}/labels/stable:classify") == 11.0
    assert score(f"/v1/models/{MODEL}/labels/canary:classify") == 1.0
    status, answer = _post(rest, body, f"/v1/models/{MODEL}/versions/7:classify")
    assert (status, answer) == (
        404,
        {"error": f"Servable not found for request: Specific({MODEL}, 7)"},
    )
    status, answer = _post(rest, body, f"/v1/models/{MODEL}/labels/nope:classify")
    assert (status, answer) == (
        400,
        {"error": "Unrecognized servable version label: nope"},
    )
    assert _post(rest, body, "/v1/models/other:classify")[0] == 404
    req = _grpc_request([serialized(x=[1.0])], label="stable")
    response = grpc_served.stub.Classify(req, timeout=TIMEOUT)
    assert response.model_spec.version.value == 1
    assert _grpc_results(response)[0][0][1] == 11.0
    req = _grpc_request([serialized(x=[1.0])], version=7)
    assert _grpc_error(grpc_served, req)[0] == grpc.StatusCode.NOT_FOUND


def test_a_predict_method_signature_of_classify_shape_is_served(rest, model_dir):
    # TF Serving checks method names only with --enable_signature_method_name_check.
    body = {"signature_name": "predict_shaped", "examples": [{"x": 1.5}]}
    status, answer = _post(rest, body)
    assert status == 200 and answer["results"][0][0] == ["none", 1.5]
    checked = flags.make_core(
        model_config_file=str(model_dir / "models.config"),
        poll_s=0,
        signature_method_name_check=True,
    )
    try:
        assert checked.signature_method_name_check
        loaded = checked.get(MODEL, 2)
        req = _grpc_request([serialized(x=[1.5])], signature="predict_shaped")
        with pytest.raises(ServingError) as info:
            classify.run_classify(req, loaded, method_name_check=True)
        assert info.value.code == "INVALID_ARGUMENT"
        assert info.value.message == (
            "Expected classification signature method_name to be "
            "tensorflow/serving/classify. Was: tensorflow/serving/predict"
        )
        req.model_spec.signature_name = "classify"
        _, result = classify.run_classify(req, loaded, method_name_check=True)
        assert result.scores[0, 0] == 1.5
    finally:
        checked.stop()


def test_metadata_shows_the_classify_method_name(rest, grpc_served):
    status, body = request(rest, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["classify"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert sorted(signatures["classify"]["outputs"]) == ["classes", "scores"]
    assert signatures["predict_shaped"]["method_name"] == "tensorflow/serving/predict"
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = MODEL
    req.metadata_field.append("signature_def")
    response = grpc_served.stub.GetModelMetadata(req, timeout=TIMEOUT)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    method = signature_map.signature_def["classify"].method_name
    assert method == "tensorflow/serving/classify"


# --- Signature and output errors (classifier.cc) --------------------------------

SIGNATURE_ERRORS = [
    ("nope", "No signature was found with the name: nope"),
    ("float_input", "No classification inputs found in SignatureDef: inputs {"),
    ("two_inputs", "Expected one input Tensor."),
    ("int_inputs", "Expects arg[0] to be int32 but string is provided"),
    ("three_outputs", "Expected one or two output Tensors, found 3"),
    (
        "no_class_outputs",
        "Expected classification signature outputs to contain at least one of "
        '"classes" or "scores". Signature was: inputs {',
    ),
    ("double_scores", "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    ("int_classes", "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
    ("rank1_scores", "Expected Tensor shape: [batch_size num_classes] but got [2]"),
    ("one_row", "Expected scores output batch size of 2. Got: 1"),
    ("mismatch", "Tensors class and score should match in dim_size(1). Got 3 vs. 2"),
]


@pytest.mark.parametrize("signature, message", SIGNATURE_ERRORS)
def test_signatures_that_cannot_classify(rest, grpc_served, signature, message):
    body = {"signature_name": signature, "examples": [{"x": 1.5}, {}]}
    status, answer = _post(rest, body)
    assert status == 400, answer
    assert list(answer) == ["error"] and answer["error"].startswith(message)
    req = _grpc_request([serialized(x=[1.5]), b""], signature=signature)
    code, details = _grpc_error(grpc_served, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == answer["error"]


def test_what_the_graph_refuses_is_a_400(rest):
    # 1 is an int64 feature; the model parses x as float (tf.io.parse_example).
    status, answer = _post(rest, {"examples": [{"x": 1}]})
    assert status == 400
    assert "Key: x" in answer["error"] and "Data types don't match" in answer["error"]
    status, answer = _post(rest, {"examples": [{"x": [1.5, 2.5]}]})
    assert status == 400 and "Key: x" in answer["error"]


def test_grpc_request_errors(grpc_served):
    req = classification_pb2.ClassificationRequest()
    assert _grpc_error(grpc_served, req) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    req.model_spec.name = MODEL
    assert _grpc_error(grpc_served, req) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Input is empty.",
    )
    req.input.example_list_with_context.context.SetInParent()
    assert _grpc_error(grpc_served, req)[1] == "Input is empty."


# --- JSON (json_tensor.cc) ----------------------------------------------------------

JSON_ERRORS = [
    ({}, "JSON Value: {} When method is classify, key 'examples' is expected"),
    ({"examples": {}}, "JSON Value: {\"examples\": {}} Expecting 'examples' value"),
    ({"examples": []}, "JSON Value: {\"examples\": []} 'examples' value is an empty"),
    (
        {"signature_name": ["x"], "examples": [{}]},
        'JSON Value: {"signature_name": ["x"], "examples": [{}]} not '
        "formatted correctly. 'signature_name' key must be a string value.",
    ),
    ({"context": [{}], "examples": [{}]}, "Example must be JSON object but got JSON"),
    ({"examples": [[{"n": 1}]]}, "Example must be JSON object but got JSON Array"),
    ({"examples": ["x"]}, "Example must be JSON object but got JSON String"),
    ({"examples": [{"n": [1, None]}]}, "Feature: n has element with unexpected JSON"),
    ({"examples": [{"n": [1, 1.0]}]}, "Unexpected element type in feature: n expect"),
    ({"examples": [{"x": [1.5, 2]}]}, "Unexpected element type in feature: x expect"),
    ({"examples": [{"c": ["a", 1]}]}, "Unexpected element type in feature: c expect"),
    ({"examples": [{"n": [1, {"t": 1}]}]}, "Feature: n has element with unexpected"),
    ({"examples": [{"n": [[10], 20]}]}, "Feature: n has element with unexpected"),
    ({"examples": [{"n": [1, (1 << 64) - 13]}]}, "Feature: n has uint64_t element."),
    ({"examples": [{"c": {"b64": "!!"}}]}, "Unable to base64 decode"),
    ({"examples": [{"c": {"b64": 1}}]}, "Feature: c has element with unexpected"),
]


JSON_TYPES = {
    "Null": [1, None],
    "Object": [1, {"t": 1}],
    "Array": [[10], 20],
    "int64": [1, 1.0],
    "float": [1.5, 2],
    "bytes": ["a", 1],
}


@pytest.mark.parametrize("body, message", JSON_ERRORS)
def test_json_errors(rest, body, message):
    status, answer = _post(rest, body)
    assert status == 400, answer
    assert list(answer) == ["error"] and answer["error"].startswith(message)


@pytest.mark.parametrize("kind", sorted(JSON_TYPES))
def test_json_type_errors_name_the_type(rest, kind):
    status, answer = _post(rest, {"examples": [{"f": JSON_TYPES[kind]}]})
    assert status == 400
    assert answer["error"] in (
        f"Feature: f has element with unexpected JSON type: {kind}",
        f"Unexpected element type in feature: f expecting type: {kind}",
    )


def test_malformed_json_and_a_bad_model_name_order(rest):
    assert _post(rest, None, raw=b"") == (
        400,
        {"error": "JSON Parse error: The document is empty"},
    )
    # ProcessClassifyRequest reads the JSON before it looks for the model.
    status, answer = _post(rest, {"examples": []}, "/v1/models/other:classify")
    assert status == 400 and "empty array" in answer["error"]


def test_json_becomes_the_request_tf_serving_builds():
    # json_tensor_test.cc RequestWithContextAndSignature, with its edge values.
    body = b"""{
      "signature_name": "custom_signture",
      "context": {"query": "pizza", "location": ["sfo"]},
      "examples": [
        {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
        {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0,
         "intboolmix": [1, true, false]},
        {"names": "bar", "ratings": -Infinity, "empty": [], "big": 18446744073709551616}
      ]}"""
    req = parse_classify(body)
    assert req.model_spec.signature_name == "custom_signture"
    with_context = req.input.example_list_with_context
    context = with_context.context.features.feature
    assert list(context["query"].bytes_list.value) == [b"pizza"]
    assert list(context["location"].bytes_list.value) == [b"sfo"]
    first, second, third = (e.features.feature for e in with_context.examples)
    assert list(first["names"].bytes_list.value) == [b"foo", b"bar"]
    ratings = list(first["ratings"].float_list.value)
    assert ratings[:2] == [8.0, 9.0] and math.isnan(ratings[2]) and ratings[3] > 1e38
    assert list(first["age"].int64_list.value) == [20]
    assert list(second["names"].bytes_list.value) == [b"baz", b"hello"]
    assert list(second["intboolmix"].int64_list.value) == [1, 1, 0]
    assert list(third["ratings"].float_list.value) == [-math.inf]
    assert third["empty"].WhichOneof("kind") is None
    # Past uint64, rapidjson reads a double: a float feature.
    assert list(third["big"].float_list.value) == [float(1 << 64)]
    # No context: an example_list; an empty object: an empty tf.Example.
    req = parse_classify(b'{"examples": [{}]}')
    assert req.input.WhichOneof("kind") == "example_list"
    assert req.input.example_list.examples[0].SerializeToString() == b""


def test_a_repeated_feature_key_keeps_the_last_and_checks_all():
    req = parse_classify(b'{"examples": [{"n": 1, "n": [2, 3]}], "examples": 5}')
    feature = req.input.example_list.examples[0].features.feature["n"]
    assert list(feature.int64_list.value) == [2, 3]  # the first "examples" counts
    with pytest.raises(ServingError) as info:
        parse_classify(b'{"examples": [{"n": null, "n": 1}]}')
    assert info.value.message.endswith("unexpected JSON type: Null")


@pytest.mark.parametrize(
    "value, text",
    [
        (0.2, "0.2"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (9e6, "9e+06"),
        (3e-05, "3e-05"),
        (1 / 3, "0.333333343"),
        (16777216.0, "16777216.0"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_scores_are_written_as_tf_serving_writes_floats(value, text):
    assert float32_text(value) == text


def test_the_results_json():
    # json_tensor_test.cc JsonFromClassificationResult.
    result = classify.Classification(
        np.array([[b"car", b"bike"], [b"car", b"\xff"]], dtype=object),
        np.array([[0.2, 0.7], [0.7, 0.1]], dtype=np.float32),
    )
    text = b"".join(classification_pieces(result)).decode()
    assert text == (
        '{"results": [[["car", 0.2], ["bike", 0.7]], [["car", 0.7], ["\\ufffd", 0.1]]]}'
    )


# --- Limits ---------------------------------------------------------------------


def test_the_answer_must_fit_the_response_budget(rest, grpc_served):
    body = {"signature_name": "wide", "examples": [{"x": 1.0}]}
    status, answer = _post(rest, body)
    assert status == 400
    assert answer["error"].startswith("The response would take up to ")
    assert f"scores [1, {WIDE_CLASSES}] float32" in answer["error"]
    assert "the request was not run. Send fewer examples" in answer["error"]
    req = _grpc_request([serialized(x=[1.0])], signature="wide")
    code, details = _grpc_error(grpc_served, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not run" in details
    # num_classes that only the run tells: refused before anything is encoded.
    body = {"signature_name": "n_scores", "examples": [{"n": 4000}]}
    status, answer = _post(rest, body)
    assert status == 400 and "nothing was encoded." in answer["error"]
    body = {"signature_name": "n_scores", "examples": [{"n": 100}]}
    status, answer = _post(rest, body)
    assert status == 200 and len(answer["results"][0]) == 100


def test_the_context_may_not_multiply_past_the_limit(rest, grpc_served):
    context = {"tags": "t" * 30000}
    examples = [{}] * 40  # 40 copies of a 30 kB context: over 1 MiB
    status, answer = _post(rest, {"context": context, "examples": examples})
    assert status == 400
    assert answer["error"].startswith(
        "The 40 examples take 1201040 bytes once the context (30026 bytes) is copied"
    )
    assert "over this server's limit of 1048576 bytes" in answer["error"]
    req = _grpc_request([b""] * 40, serialized(tags=[b"t" * 30000]))
    code, details = _grpc_error(grpc_served, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == answer["error"]
    # Within the limit, every example gets the context.
    status, answer = _post(rest, {"context": context, "examples": [{}] * 3})
    assert status == 200 and answer["results"][2][2] == ["tags", 1.0]


def test_body_and_concurrency_limits(rest):
    status, answer = _post(rest, None, raw=b'{"examples": [' + b" " * MAX_BODY + b"]}")
    assert status == 413 and "--max_body_bytes" in answer["error"]
    limiter = rest.limiter
    held = [
        limiter.slots.acquire(blocking=False) for _ in range(limiter.max_concurrent)
    ]
    try:
        assert all(held)
        status, answer = _post(rest, {"examples": [{}]})
        assert (status, answer) == (503, {"error": "server busy; retry later."})
    finally:
        for _ in held:
            limiter.slots.release()


# --- What stays unsupported -------------------------------------------------------


def test_regress_stays_unimplemented_and_verbs_are_exact(rest, grpc_served):
    body = {"examples": [{"x": 1.0}]}
    status, answer = _post(rest, body, f"/v1/models/{MODEL}:regress")
    assert (status, answer) == (
        501,
        {"error": "regress is not supported; use :predict or :classify."},
    )
    for verb in ("Classify", "PREDICT", "explain"):
        status, answer = _post(rest, body, f"/v1/models/{MODEL}:{verb}")
        expected = f"Malformed request: POST /v1/models/{MODEL}:{verb}"
        assert (status, answer) == (400, {"error": expected})
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = MODEL
    code, details = _grpc_error(grpc_served, req, "Regress")
    assert code == grpc.StatusCode.UNIMPLEMENTED and "Classify" in details


# --- Warmup and clients -------------------------------------------------------------


def test_classify_warmup_records(core, tmp_path):
    # clf/2 loaded with its classify record: it is AVAILABLE.
    assert core.status(MODEL)[0][:2] == (2, "AVAILABLE")
    loaded = core.get(MODEL, 2)
    stand_in = types.SimpleNamespace(
        export_dir=str(tmp_path),
        signature_defs=loaded.signature_defs,
        run=loaded.run,
        version=2,
    )
    _write_warmup(tmp_path, [_classify_log("classify", serialized(x=[1.0]))] * 2)
    assert warmup.run_warmup(stand_in) == 2
    _write_warmup(tmp_path, [_classify_log("nope", serialized(x=[1.0]))])
    with pytest.raises(ServingError) as info:
        warmup.run_warmup(stand_in)
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == "No signature was found with the name: nope"
    _write_warmup(tmp_path, [_classify_log("predict_shaped", serialized(x=[1.0]))])
    assert warmup.run_warmup(stand_in) == 1
    with pytest.raises(ServingError, match="method_name to be"):
        warmup.run_warmup(stand_in, signature_method_name_check=True)


def test_clients_classify(rest, grpc_served, capsys):
    host, port = rest.server_address[:2]
    examples = [
        {"x": np.float32(1.5), "color": b"\xffred", "tags": ["a", "b"]},
        {"n": np.int64(3)},
    ]
    rest_client = RestClient(f"http://{host}:{port}", model_name=MODEL)
    with GrpcClient(f"127.0.0.1:{grpc_served.port}", model_name=MODEL) as client:
        answers = [
            c.classify(examples, context={"x": 0.5}, signature_name="classify")
            for c in (rest_client, client)
        ]
        for answer in answers:
            assert answer["classes"].tolist() == [
                ["\ufffdred".encode(), b"n", b"tags"],
                [b"none", b"n", b"tags"],
            ]
            np.testing.assert_array_equal(
                answer["scores"], np.array([[1.5, 0, 2], [0.5, 3, 0]], np.float32)
            )
        with pytest.raises(ServingClientError) as info:
            client.classify([{"n": [1, 2.5]}])
        assert info.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ServingClientError) as info:
        rest_client.classify([{"n": [1, 2.5]}])
    assert info.value.status == 400
    assert (
        info.value.message
        == "Unexpected element type in feature: n expecting type: int64"
    )
    status = client_main(
        [
            "--rest",
            f"http://{host}:{port}",
            "--model",
            MODEL,
            "classify",
            "--example",
            '{"x": 1.5, "color": "red"}',
            "--context",
            '{"n": 2}',
        ]
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out) == {
        "classes": [["red", "n", "tags"]],
        "scores": [[1.5, 2.0, 0.0]],
    }
