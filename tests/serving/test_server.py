"""The local TF Serving-style REST server, over 127.0.0.1 only: status,
metadata, predictions, load, deadlines and version swaps (bad requests:
`test_bad_requests.py`)."""

import base64
import os
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow_text  # noqa: F401

from serving import server as server_lib
from serving.json_codec import format_outputs
from tests.serving.rest import NAME, available, check_error, predict, request
from tests.serving.rest_server import start_server, stop_server
from tests.tiny_export import (
    random_token_ids,
    run_in_process,
)
from tf_switch.export import export_for_serving


def _wait_for_version(server, version, seconds):
    """Polls the model status until `version` is the one AVAILABLE version
    (the old one unloaded); returns the last AVAILABLE one seen."""
    deadline = time.monotonic() + seconds
    seen = []
    while seen != [version] and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = available(server)
    return seen[0] if seen else None


def test_status(server):
    status, body = request(server, "GET", f"/v1/models/{NAME}")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert request(server, "GET", f"/v1/models/{NAME}/versions/1")[0] == 200


def test_metadata(server):
    status, body = request(server, "GET", f"/v1/models/{NAME}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["generate", "next_token", "route", "serving_default"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["token_ids"]["dtype"] == "DT_INT32"
    assert sorted(default["outputs"]) == ["logits", "next_token"]


def test_row_and_columnar_predict_match_the_saved_model(server, exported):
    ids = random_token_ids(2, 6)
    expected = run_in_process(exported["loaded"], "serving_default", token_ids=ids)
    status, body = predict(server, {"instances": ids.tolist()})
    assert status == 200
    rows = body["predictions"]
    assert len(rows) == 2 and sorted(rows[0]) == ["logits", "next_token"]
    for i in range(2):
        np.testing.assert_allclose(
            rows[i]["logits"], expected["logits"][i], rtol=1e-5, atol=1e-6
        )
        assert rows[i]["next_token"] == expected["next_token"][i]
    status, body = predict(server, {"inputs": {"token_ids": ids.tolist()}})
    assert status == 200
    np.testing.assert_allclose(
        body["outputs"]["logits"], expected["logits"], rtol=1e-5, atol=1e-6
    )
    assert body["outputs"]["next_token"] == expected["next_token"].tolist()
    # A bare value is the one input; versions/1 is the served version.
    status, body2 = predict(
        server,
        {"signature_name": "serving_default", "inputs": ids.tolist()},
        path=f"/v1/models/{NAME}/versions/1:predict",
    )
    assert status == 200 and body2 == body


def test_route(server, exported):
    ids = random_token_ids(2, 5, seed=3)
    expected = run_in_process(exported["loaded"], "route", token_ids=ids)
    status, body = predict(server, {"signature_name": "route", "inputs": ids.tolist()})
    assert status == 200
    assert body["outputs"]["expert"] == expected["expert"].tolist()
    np.testing.assert_allclose(
        body["outputs"]["probability"], expected["probability"], rtol=1e-6
    )


def test_generate_with_strings_and_b64(server, exported):
    prompts = ["The king", "A fool loves"]
    expected = run_in_process(
        exported["loaded"],
        "generate",
        prompt=np.array(prompts, object),
        max_new_tokens=np.array([3, 2], np.int32),
        temperature=np.array([0.0, 0.7], np.float32),
        top_k=np.array([0, 4], np.int32),
        top_p=np.array([1.0, 0.9], np.float32),
        seed=np.array([0, 5], np.int32),
    )
    rows = [
        {"prompt": p, "max_new_tokens": n, "temperature": t}
        | {"top_k": k, "top_p": top_p, "seed": seed}
        for p, n, t, k, top_p, seed in zip(
            prompts, [3, 2], [0, 0.7], [0, 4], [1, 0.9], [0, 5], strict=True
        )
    ]
    status, body = predict(server, {"signature_name": "generate", "instances": rows})
    assert status == 200
    assert [row["text"] for row in body["predictions"]] == [
        t.decode() for t in expected["text"]
    ]
    assert [row["token_ids"] for row in body["predictions"]] == (
        expected["token_ids"].tolist()
    )
    assert [row["expert"] for row in body["predictions"]] == (
        expected["expert"].tolist()
    )
    b64 = [{"b64": base64.b64encode(p.encode()).decode()} for p in prompts]
    columns = {"prompt": b64, "max_new_tokens": [3, 2], "temperature": [0.0, 0.7]}
    columns |= {"top_k": [0, 4], "top_p": [1.0, 0.9], "seed": [0, 5]}
    status, body = predict(server, {"signature_name": "generate", "inputs": columns})
    assert status == 200
    assert body["outputs"]["text"] == [t.decode() for t in expected["text"]]
    assert body["outputs"]["token_ids"] == expected["token_ids"].tolist()


def test_output_encoding():
    outputs = {
        "text": np.array([b"ok", b"\xff\xfe"], object),
        "raw_bytes": np.array([b"ok", b"x"], object),
    }
    body = format_outputs(outputs, row_format=True)
    assert body["predictions"][0] == {"raw_bytes": {"b64": "b2s="}, "text": "ok"}
    assert body["predictions"][1]["text"] == {"b64": "//4="}


def test_saturated_server_is_503(server, exported):
    ids = random_token_ids(1, 4).tolist()
    acquired = [server.slots.acquire(blocking=False) for _ in range(8)]
    try:
        assert all(acquired)
        status, body = predict(server, {"instances": ids})
        check_error(status, body, 503, exported)
        assert "busy" in body["error"]
    finally:
        for _ in acquired:
            server.slots.release()
    assert predict(server, {"instances": ids})[0] == 200


def test_deadline_is_504(exported):
    server = start_server(exported["model_dir"], poll_s=0, request_timeout_s=1e-4)
    try:
        body = {
            "signature_name": "generate",
            "instances": [
                {"prompt": "The king", "max_new_tokens": 8, "temperature": 0}
                | {"top_k": 0, "top_p": 1.0, "seed": 0}
            ],
        }
        status, answer = predict(server, body)
        check_error(status, answer, 504, exported)
    finally:
        stop_server(server)


def test_ignores_temporary_dirs_and_swaps_in_new_versions(exported, tmp_path):
    model_dir = tmp_path / NAME
    model_dir.mkdir()
    shutil.copytree(exported["path"], model_dir / "1")
    (model_dir / ".2-tmpxyz").mkdir()
    (model_dir / "notes").mkdir()
    server = start_server(tmp_path / NAME, poll_s=0.2)
    try:
        assert (
            request(server, "GET", f"/v1/models/{NAME}")[1]["model_version_status"][0][
                "version"
            ]
            == "1"
        )
        export_for_serving(
            exported["model"], exported["tokenizer"], str(tmp_path), model_name=NAME
        )
        assert os.path.isdir(model_dir / "2")
        assert _wait_for_version(server, "2", seconds=20) == "2"
        ids = random_token_ids(1, 4).tolist()
        assert predict(server, {"instances": ids})[0] == 200
        status, _ = predict(server, {"instances": ids}, f"/v1/models/{NAME}/versions/1")
        assert status == 400  # no :predict verb
        path = f"/v1/models/{NAME}/versions/1:predict"
        assert predict(server, {"instances": ids}, path)[0] == 404
    finally:
        stop_server(server)


def test_command_line_parses(exported):
    with pytest.raises(SystemExit):
        server_lib.main(["--model_name", NAME])


@pytest.mark.slow
def test_version_swap_under_load_fails_no_request(exported, tmp_path):
    # The load: 16 clients, at least 50 requests each, kept going
    # until version 2 has been exported and swapped in; version 2 holds the
    # same weights, so every answer must equal the in-process one.
    shutil.copytree(exported["path"], tmp_path / NAME / "1")
    server = start_server(tmp_path / NAME, poll_s=0.2, max_concurrent=16)
    ids = [random_token_ids(1, 6, seed=s) for s in range(16)]
    expected = [
        run_in_process(exported["loaded"], "serving_default", token_ids=x) for x in ids
    ]
    failures, counts, swapped = [], [0] * 16, threading.Event()

    def client(k):
        deadline = time.monotonic() + 120
        while (counts[k] < 50 or not swapped.is_set()) and time.monotonic() < deadline:
            counts[k] += 1
            try:
                status, body = predict(server, {"inputs": ids[k].tolist()})
                assert status == 200, body
                np.testing.assert_allclose(
                    body["outputs"]["logits"],
                    expected[k]["logits"],
                    rtol=1e-5,
                    atol=1e-6,
                )
            except (AssertionError, OSError, ValueError) as error:
                failures.append(error)  # A dead client thread would hide it.
                return

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    try:
        for thread in threads:
            thread.start()
        export_for_serving(
            exported["model"], exported["tokenizer"], str(tmp_path), model_name=NAME
        )
        deadline = time.monotonic() + 60
        assert _wait_for_version(server, "2", seconds=60) == "2"
        before = sum(counts)
        while sum(counts) < before + 32 and time.monotonic() < deadline:
            time.sleep(0.05)  # requests answered by the new version
        swapped.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert not failures, failures[:3]
        assert min(counts) >= 50
    finally:
        swapped.set()
        stop_server(server)
