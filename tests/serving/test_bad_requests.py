"""Bad requests to the local REST server: TF Serving's status codes, error
bodies without stacks or paths, and a server that stays healthy after them."""

import json
import threading
import time

import numpy as np
import pytest
import tensorflow_text  # noqa: F401

from serving.status import clean_message
from tests.serving.rest import NAME, check_error, predict, request
from tests.tiny_export import random_token_ids, run_in_process

# The generate signature's sampling inputs, valid: the case is elsewhere.
SAMPLING = {"top_k": [0], "top_p": [1.0], "seed": [0]}

BAD_REQUESTS = [
    ({"instances": [[5, 1.5]]}, "int32"),
    ({"instances": [[5, True]]}, "int32"),
    ({"instances": [[5, "7"]]}, "int32"),
    ({"instances": [[5, 2**40]]}, "out of range"),
    ({"instances": [[5, -1]]}, ">= 0"),
    ({"instances": [[5, 500]]}, "vocabulary size"),
    ({"instances": [[5, 6], [5]]}, "ragged"),
    ({"inputs": [[5, 6], [5, 6, 7]]}, "ragged"),
    ({"instances": [[5]], "inputs": [[5]]}, "only one"),
    ({"signature_name": "serving_default"}, "Missing"),
    ({"instances": []}, "non-empty"),
    ({"signature_name": "x", "instances": [[5]]}, 'name: "x" not found'),
    ({"inputs": {"tokens": [[5]]}}, "tokens"),
    ({"instances": [{"tokens": [5]}]}, "tokens"),
    ({"signature_name": "generate", "inputs": {"prompt": ["a"]}}, "missing"),
    (
        {
            "signature_name": "generate",
            "inputs": {"prompt": [5], "max_new_tokens": [1], "temperature": [0.0]}
            | SAMPLING,
        },
        "string",
    ),
    (
        {
            "signature_name": "generate",
            "inputs": {"prompt": ["a"], "max_new_tokens": [1], "temperature": ["0"]}
            | SAMPLING,
        },
        "float32",
    ),
    # The list, continued: types, ranks, lengths, request shape.
    ({"instances": [[5, None]]}, "int32"),
    ({"instances": [[5, 2**31]]}, "out of range for int32"),
    ({"instances": [[5, -(2**31) - 1]]}, "out of range for int32"),
    (
        {
            "signature_name": "generate",
            "inputs": {"prompt": ["a"], "max_new_tokens": [1]}
            | {"temperature": [10**400]}
            | SAMPLING,
        },
        # rapidjson stores it as a double, which overflows (json_tensor.cc).
        "Number too big to be stored in double",
    ),
    (
        {
            "signature_name": "generate",
            "inputs": {"prompt": ["a"], "max_new_tokens": [1]}
            | {"temperature": [1e39]}
            | SAMPLING,
        },
        "out of range for float32",
    ),
    ({"instances": [5, 6]}, "rank 2"),
    ({"inputs": [[[5, 6]]]}, "rank 2"),
    ({"inputs": []}, "rank 2"),
    ({"instances": [[5] * 13]}, "at most 12 tokens"),
    ({"instances": [[5]], "signature_name": 5}, "must be a string"),
    ({"instances": {"token_ids": [[5]]}}, "must be a JSON list"),
    ({"instances": [{"b64": "AAAA"}]}, "int32"),
    (
        {
            "signature_name": "generate",
            "inputs": {"prompt": [{"b64": "*"}], "max_new_tokens": [1]}
            | {"temperature": [0.0]}
            | SAMPLING,
        },
        "base64",
    ),
]


@pytest.mark.parametrize("body, message", BAD_REQUESTS)
def test_bad_requests_are_400(server, exported, body, message):
    status, answer = predict(server, body)
    check_error(status, answer, 400, exported)
    assert message in answer["error"]
    assert_healthy(server)


def assert_healthy(server):
    ids = random_token_ids(1, 3, seed=11).tolist()
    status, body = predict(server, {"instances": ids})
    assert status == 200 and len(body["predictions"]) == 1, body


RAW_BODIES = [
    (b"", "JSON Parse error: The document is empty"),
    (b"{", "JSON Parse error"),
    (b'{"instances": [[5]]', "JSON Parse error"),
    (b"[1, 2]", "Is not object"),
    (b"\xff\xfe", "not valid UTF-8"),
    (
        '{"signature_name": "generate", "instances": [{"prompt": "\u00e9'.encode()
        + b"\xe9\xff"
        + b'", "max_new_tokens": 1, "temperature": 0, "top_k": 0, "top_p": 1,'
        + b' "seed": 0}]}',
        "not valid UTF-8",
    ),  # fmt: skip
    (b"[" * 100_000, "nested too deeply"),
    (b'{"inputs": ' + b"[" * 300 + b"5" + b"]" * 300 + b"}", "deeper than 254"),
]


@pytest.mark.parametrize("raw, message", RAW_BODIES)
def test_malformed_bodies_are_400(server, exported, raw, message):
    status, body = request(server, "POST", f"/v1/models/{NAME}:predict", raw=raw)
    check_error(status, body, 400, exported)
    assert message in body["error"], body
    assert_healthy(server)


def test_unknown_model_or_version_is_404(server, exported):
    for method, path in [
        ("POST", "/v1/models/other:predict"),
        ("POST", f"/v1/models/{NAME}/versions/7:predict"),
        ("GET", "/v1/models/other"),
        ("GET", f"/v1/models/{NAME}/versions/7"),
        ("GET", f"/v1/models/{NAME}/versions/7/metadata"),
        ("GET", "/elsewhere"),
    ]:
        body = {"instances": [[5]]} if method == "POST" else None
        status, answer = request(server, method, path, body=body)
        check_error(status, answer, 404, exported)


def test_wrong_method_or_path_under_v1_is_400(server, exported):
    # http_rest_api_handler.cc: anything its POST and GET regexes do not
    # match is InvalidArgument "Malformed request: METHOD PATH" (400).
    for method, path in [
        ("GET", f"/v1/models/{NAME}:predict"),
        ("PUT", f"/v1/models/{NAME}:predict"),
        ("DELETE", f"/v1/models/{NAME}:predict"),
        ("PATCH", f"/v1/models/{NAME}/versions/1:predict"),
        ("POST", f"/v1/models/{NAME}"),
        ("PUT", f"/v1/models/{NAME}"),
        ("DELETE", f"/v1/models/{NAME}"),
        ("POST", f"/v1/models/{NAME}:explode"),
    ]:
        body = {"instances": [[5]]} if method != "GET" else None
        status, answer = request(server, method, path, body=body)
        check_error(status, answer, 400, exported)
        assert answer["error"] == f"Malformed request: {method} {path}"
    # HEAD: the same status, and headers only.
    assert request(server, "HEAD", f"/v1/models/{NAME}:predict") == (400, None)
    assert_healthy(server)


def test_oversized_body_is_413(server, exported):
    raw = b"[" + b"5," * (600 * 1024) + b"5]"
    status, body = request(server, "POST", f"/v1/models/{NAME}:predict", raw=raw)
    check_error(status, body, 413, exported)


def test_still_healthy_after_bad_requests_and_under_load(server, exported):
    # Runs after the bad-request tests (file order).
    ids = [random_token_ids(2, 5, seed=s) for s in range(8)]
    expected = [
        run_in_process(exported["loaded"], "serving_default", token_ids=x) for x in ids
    ]
    failures = []

    def client(k):
        for _ in range(10):
            status, body = predict(server, {"inputs": ids[k].tolist()})
            try:
                assert status == 200, body
                out = body["outputs"]
                np.testing.assert_allclose(
                    out["logits"], expected[k]["logits"], rtol=1e-5, atol=1e-6
                )
                assert out["next_token"] == expected[k]["next_token"].tolist()
            except AssertionError as error:
                failures.append(error)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:3]
    assert time.monotonic() - start < 60


def test_tf_error_messages_lose_stacks_nodes_and_paths():
    message = (
        "Graph execution error:\n\nDetected at node a/Assert defined at:\n"
        '  File "/work/x.py", line 3\nassertion failed: [ids must be >= 0] '
        "[x (a/y:0) = ] [-1]\n\t [[{{node a/Assert}}]] [Op:__inference_f_1] "
        "reading /tmp/secret/model"
    )
    cleaned = clean_message(message)
    assert cleaned.startswith("assertion failed: [ids must be >= 0]")
    assert "/work" not in cleaned and "/tmp" not in cleaned and "node" not in cleaned
    assert "Op:" not in cleaned


GENERATE = f"/v1/models/{NAME}:predict"
_PROMPT = '{"signature_name": "generate", "inputs": {"prompt": [%s], '
_REST = (
    '"max_new_tokens": [1], "temperature": [%s], "top_k": [0], "top_p": [1.0], '
    '"seed": [0]}}'
)


@pytest.mark.parametrize(
    "raw, message",
    [
        # A lone surrogate in a prompt was a 500 (UnicodeEncodeError); rapidjson
        # refuses it: kParseErrorStringUnicodeSurrogateInvalid.
        ((_PROMPT % '"a\\ud800"' + _REST % "0").encode(), "surrogate pair"),
        ((_PROMPT % '"\\udc00b"' + _REST % "0").encode(), "surrogate pair"),
        # 1e999 parsed as infinity; rapidjson: kParseErrorNumberTooBig.
        ((_PROMPT % '"a"' + _REST % "1e999").encode(), "Number too big"),
        ((_PROMPT % '"a"' + _REST % "-1e400").encode(), "Number too big"),
    ],
)
def test_json_that_rapidjson_refuses_is_400(server, exported, raw, message):
    status, body = request(server, "POST", GENERATE, raw=raw)
    check_error(status, body, 400, exported)
    assert message in body["error"]
    assert_healthy(server)


def test_json_that_rapidjson_reads_is_read_alike(server):
    ids = random_token_ids(1, 3, seed=2).tolist()
    body = json.dumps({"instances": ids}).encode()
    # A byte order mark is skipped (rapidjson's EncodedInputStream).
    status, answer = request(server, "POST", GENERATE, raw=b"\xef\xbb\xbf" + body)
    assert status == 200, answer
    # Of duplicate keys the first counts (rapidjson's FindMember).
    first_wins = (
        b'{"instances": %s, "instances": "not a list"}' % json.dumps(ids).encode()
    )
    status, answer = request(server, "POST", GENERATE, raw=first_wins)
    assert status == 200, answer
    last_bad = (
        b'{"instances": "not a list", "instances": %s}' % json.dumps(ids).encode()
    )
    status, answer = request(server, "POST", GENERATE, raw=last_bad)
    assert status == 400 and "must be a JSON list" in answer["error"]
    # A paired surrogate escape is one character, and fine.
    raw = (_PROMPT % '"\\ud83d\\ude00"' + _REST % "0").encode()
    assert request(server, "POST", GENERATE, raw=raw)[0] == 200
