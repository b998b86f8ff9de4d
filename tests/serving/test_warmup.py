"""Warmup replay at load (serving/warmup.py), as TF Serving's
saved_model_warmup_util.cc does it."""

import os
import shutil
import types

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from serving import models, warmup
from serving.grpc_server import make_grpc_server
from serving.models import ModelManager
from serving.servable import LoadedVersion
from serving.status import ServingError
from tests.serving.grpc_requests import predict_request
from tests.serving.rest import NAME
from tests.tiny_export import random_token_ids


def _write(export_dir, logs):
    path = os.path.join(export_dir, warmup.WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log if isinstance(log, bytes) else log.SerializeToString())
    return path


def _predict_log(signature="serving_default", ids=None):
    ids = random_token_ids(1, 4) if ids is None else ids
    # The model name is ignored: the loading version runs the record.
    request = predict_request(signature, model="whatever", token_ids=ids)
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def _stub(tmp_path):
    """A stand-in for a LoadedVersion, for records that run nothing."""
    return types.SimpleNamespace(export_dir=str(tmp_path))


def test_the_exports_own_records_replay(exported):
    loaded = LoadedVersion(exported["path"], 1)
    assert warmup.run_warmup(loaded) == 3  # serving_default, next_token, route
    assert warmup.run_warmup(_stub(exported["base"])) == 0  # no file: fine


def test_at_most_1000_records(tmp_path):
    empty = prediction_log_pb2.PredictionLog()  # No log_type: skipped, as TF's.
    _write(tmp_path, [empty] * warmup.MAX_NUM_RECORDS)
    assert warmup.run_warmup(_stub(tmp_path)) == 1000
    path = _write(tmp_path, [empty] * (warmup.MAX_NUM_RECORDS + 1))
    with pytest.raises(ServingError) as info:
        warmup.run_warmup(_stub(tmp_path))
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == (
        f"Number of warmup records exceeds the maximum (1000) at {path}"
    )


@pytest.mark.parametrize(
    "record, code, message",
    [
        (b"\xff\xff\xff", "INVALID_ARGUMENT", "Failed to parse warmup record"),
        (
            prediction_log_pb2.PredictionLog(
                session_run_log=prediction_log_pb2.SessionRunLog()
            ),
            "UNIMPLEMENTED",
            "Unsupported log_type for warmup: 5",
        ),
        (
            prediction_log_pb2.PredictionLog(
                predict_streamed_log=prediction_log_pb2.PredictStreamedLog()
            ),
            "UNIMPLEMENTED",
            "Unsupported log_type for warmup: 7",
        ),
        (
            # Classify records run (test_classify.py); Regress is not here.
            prediction_log_pb2.PredictionLog(
                regress_log=prediction_log_pb2.RegressLog()
            ),
            "UNIMPLEMENTED",
            "regress_log",
        ),
    ],
)
def test_bad_records_fail(tmp_path, record, code, message):
    _write(tmp_path, [record])
    with pytest.raises(ServingError) as info:
        warmup.run_warmup(_stub(tmp_path))
    assert info.value.code == code and message in info.value.message


def test_a_corrupt_file_is_data_loss(tmp_path):
    path = _write(tmp_path, [prediction_log_pb2.PredictionLog()] * 3)
    with open(path, "r+b") as f:
        f.seek(14)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ServingError) as info:
        warmup.run_warmup(_stub(tmp_path))
    assert info.value.code == "DATA_LOSS"
    assert "Please verify your warmup data is in TFRecord format" in info.value.message


def test_warmup_runs_before_the_version_is_available(exported, tmp_path, monkeypatch):
    shutil.copytree(exported["path"], tmp_path / "1")
    manager = ModelManager(NAME, str(tmp_path), enable_warmup=False)
    seen = []

    def spy(loaded, **options):
        # While version 2 warms up, it is LOADING and requests get version 1.
        seen.append((loaded.version, manager.status(), manager.get().version))
        return 0

    monkeypatch.setattr(models.warmup, "run_warmup", spy)
    manager.enable_warmup = True
    shutil.copytree(exported["path"], tmp_path / "2")
    assert manager.reload()
    during = [(2, "LOADING", "OK", ""), (1, "AVAILABLE", "OK", "")]
    assert seen == [(2, during, 1)]
    assert [s[:2] for s in manager.status()] == [(2, "AVAILABLE"), (1, "END")]


def test_a_failing_record_fails_the_load_and_the_old_version_serves(exported, tmp_path):
    model_dir = tmp_path / NAME
    shutil.copytree(exported["path"], model_dir / "1")
    server, port = make_grpc_server(str(tmp_path / NAME), NAME, port=0, poll_s=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        shutil.copytree(exported["path"], model_dir / "2")
        bad = np.array([[5, exported["vocab_size"]]], np.int32)  # Out of vocabulary.
        _write(model_dir / "2", [_predict_log(), _predict_log(ids=bad)])
        manager = server.core.models[NAME]
        assert not manager.reload()
        version_2, version_1 = manager.status()
        assert version_2[:3] == (2, "END", "INVALID_ARGUMENT")
        assert "vocabulary size" in version_2[3] and str(tmp_path) not in version_2[3]
        assert version_1 == (1, "AVAILABLE", "OK", "")
        request = _predict_log().predict_log.request
        request.model_spec.name = NAME
        assert stub.Predict(request, timeout=30).model_spec.version.value == 1
        # The same version loads without warmup (--enable_model_warmup=false).
        unchecked = ModelManager(NAME, str(model_dir), enable_warmup=False)
        assert [s[:2] for s in unchecked.status()] == [(2, "AVAILABLE")]
    finally:
        channel.close()
        server.stop(None).wait(5)
        server.core.stop()
        server.limiter.shutdown()
