"""Bounded answers (serving/responses.py; issue 13 item 1): the response
budget before running and before encoding, JSON encoded in pieces within the
request's slot and deadline, and the cheap `next_token` signature."""

import json
import threading

import numpy as np
import pytest

from serving import responses
from serving import server as server_lib
from serving.json_codec import format_outputs
from serving.responses import ResponseBudget, json_pieces
from serving.status import ServingError
from tests.serving.rest import NAME, check_error, predict
from tests.serving.rest_server import start_server, stop_server
from tests.tiny_export import LENGTH, random_token_ids

ROW_LOGITS_BYTES = LENGTH * 108 * 25  # one full row of the tiny export's logits
BUDGET = 40 * ROW_LOGITS_BYTES  # room for about 38 full rows


@pytest.fixture(scope="module")
def server(exported):
    assert exported["vocab_size"] == 108
    server = start_server(exported["model_dir"], poll_s=0, max_response_bytes=BUDGET)
    yield server
    stop_server(server)


def _extremes():
    return {
        "f32": np.array(
            [[-1.1754943508222875e-38, -3.4028234663852886e38, np.nan, -np.inf]],
            np.float32,
        ),
        "f64": np.array([[-2.2250738585072014e-308, -1.7976931348623157e308]]),
        "i32": np.full((1, 3), -(2**31), np.int32),
        "i64": np.full((1, 2), -(2**63), np.int64),
        "b": np.zeros((1, 5), bool),
        "text": np.array([["\x00\x01é😀".encode(), b"\xff\xfe"]], object),
        "x_bytes": np.array([[b"\x00" * 7, b""]], object),
    }


@pytest.mark.parametrize("row_format", [True, False])
def test_the_budget_bounds_the_json_it_allows(row_format):
    # The widest values of each dtype: the estimate must never be below the
    # text it lets through.
    rng = np.random.default_rng(0)
    cases = [
        _extremes(),
        {"logits": rng.standard_normal((7, 5, 9)).astype(np.float32) * 1e-30},
        {"next_token": np.arange(3, dtype=np.int32)},
    ]
    for outputs in cases:
        text = json.dumps(format_outputs(outputs, row_format))
        estimate = ResponseBudget().estimate(outputs, row_format)
        assert len(text) <= estimate <= 2 * len(text) + 200, (estimate, len(text))
        ResponseBudget(estimate).check_outputs(outputs, None, row_format)
        with pytest.raises(ServingError) as info:
            ResponseBudget(len(text) - 1).check_outputs(outputs, None, row_format)
        assert info.value.code == "INVALID_ARGUMENT"
        assert "--max_response_bytes" in info.value.message


@pytest.mark.parametrize("row_format", [True, False])
def test_json_pieces_are_the_same_text_as_one_dumps(monkeypatch, row_format):
    monkeypatch.setattr(responses, "_BLOCK_VALUES", 5)  # many small blocks
    rng = np.random.default_rng(1)
    cases = [
        {
            "logits": rng.standard_normal((6, 3, 4)).astype(np.float32),
            "next_token": np.arange(6, dtype=np.int32),
        },
        {"only": rng.integers(0, 9, (11, 2)).astype(np.int64)},
        {"text": np.array([b"a", b"\xff", "é".encode()], object)},
        {"empty": np.zeros((0, 3), np.float32)},
        _extremes(),
    ]
    if not row_format:
        cases.append({"scalar": np.float32(2.5), "vector": np.ones(3, np.int32)})
    for outputs in cases:
        expected = json.dumps(format_outputs(outputs, row_format))
        assert b"".join(json_pieces(outputs, row_format)).decode() == expected


def test_full_logits_over_the_budget_are_refused_before_running(
    server, exported, monkeypatch
):
    ran = []
    real_run = type(server.core.get(NAME)).run
    monkeypatch.setattr(
        type(server.core.get(NAME)),
        "run",
        lambda self, *a: ran.append(a[0]) or real_run(self, *a),
    )
    ids = random_token_ids(60, LENGTH).tolist()
    status, body = predict(server, {"instances": ids})
    check_error(status, body, 400, exported)
    message = body["error"]
    assert "logits [60, 12, 108] float32" in message
    assert f"limit of {BUDGET} bytes (--max_response_bytes)" in message
    assert "the request was not run" in message
    assert "`next_token` signature" in message
    assert ran == []
    # The same rows through the cheap signature fit easily.
    status, body = predict(server, {"signature_name": "next_token", "instances": ids})
    assert status == 200, body
    assert len(body["predictions"]) == 60
    assert len(body["predictions"][0]["top_tokens"]) == 10
    # And full logits for fewer rows still come back.
    status, body = predict(server, {"instances": ids[:30]})
    assert status == 200, body
    assert np.shape(body["predictions"][0]["logits"]) == (LENGTH, 108)


def test_outputs_larger_than_predicted_are_refused_before_encoding(
    server, exported, monkeypatch
):
    # A signature whose outputs the shapes cannot predict (a string output
    # counts as empty before the run) is checked again, before encoding.
    encoded = []
    monkeypatch.setattr(
        server_lib, "json_pieces", lambda *a: encoded.append(1) or [b"{}"]
    )
    loaded = type(server.core.get(NAME))
    monkeypatch.setattr(
        loaded, "run", lambda self, *a: {"text": np.array([b"x" * BUDGET], object)}
    )
    status, body = predict(
        server,
        {
            "signature_name": "generate",
            "inputs": {
                "prompt": ["a"],
                "max_new_tokens": [1],
                "temperature": [0.0],
                "top_k": [0],
                "top_p": [1.0],
                "seed": [0],
            },
        },
    )
    check_error(status, body, 400, exported)
    assert "nothing was encoded" in body["error"]
    assert encoded == []


def test_encoding_holds_the_slot_and_keeps_the_deadline(exported, monkeypatch):
    # Before: the answer was encoded after the slot was released and outside
    # the deadline, so a slow encode neither blocked others nor timed out.
    server = start_server(
        exported["model_dir"], poll_s=0, max_concurrent=1, request_timeout_s=0.5
    )
    release = threading.Event()
    real = server_lib.json_pieces

    def slow_pieces(outputs, row_format):
        release.wait(10)
        return real(outputs, row_format)

    monkeypatch.setattr(server_lib, "json_pieces", slow_pieces)
    ids = random_token_ids(1, 3).tolist()
    results = []
    try:
        first = threading.Thread(
            target=lambda: results.append(predict(server, {"instances": ids}))
        )
        first.start()
        first.join(timeout=30)
        assert results and results[0][0] == 504, results  # the deadline holds
        status, body = predict(server, {"instances": ids})
        check_error(status, body, 503, exported)  # the encode holds the slot
    finally:
        release.set()
        stop_server(server)
