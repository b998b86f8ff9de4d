"""Replay of `assets.extra/tf_serving_warmup_requests` when a version loads.

As TF Serving's `saved_model_warmup_util.cc` / `saved_model_warmup.cc`:

- no file: nothing to do (warmup data is optional);
- the file is a TFRecord of `PredictionLog`s; each `predict_log` and
  `classify_log` request is run on the version being loaded (its
  `model_spec` name and version are ignored; `RunClassify`, so a classify
  record needs no model_spec) before the version becomes AVAILABLE;
- any failing record fails the load (TF Serving returns the record's status
  from the loader; the old version keeps serving): a record that is not a
  `PredictionLog` is INVALID_ARGUMENT "Failed to parse warmup record", more
  than `MAX_NUM_RECORDS` (1000, `WarmupConsts::kMaxNumRecords`) is
  INVALID_ARGUMENT "Number of warmup records exceeds the maximum (1000)", a
  corrupt file is DATA_LOSS, and `session_run_log` and
  `predict_streamed_log` are UNIMPLEMENTED "Unsupported log_type for
  warmup: N" (the field number). Regress and multi-inference records,
  which TF Serving runs, are UNIMPLEMENTED here, because these servers have
  only Predict and Classify.
"""

import os

from . import classify, predict
from .status import ServingError, from_op_error

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_NUM_RECORDS = 1000

# PredictionLog.log_type field numbers, as TF Serving's message prints the
# case: saved_model_warmup.cc RunWarmupRequest refuses these two.
_UNSUPPORTED = {"session_run_log": 5, "predict_streamed_log": 7}
_NOT_HERE = frozenset(["regress_log", "multi_inference_log"])


def _records(path):
    import tensorflow as tf

    try:
        yield from tf.data.TFRecordDataset(path).as_numpy_iterator()
    except tf.errors.OpError as error:
        if isinstance(error, tf.errors.DataLossError):
            raise ServingError(
                "DATA_LOSS",
                f"{error.message}. Please verify your warmup data is in TFRecord "
                "format.",
            ) from error
        raise from_op_error(error) from error


def run_warmup(loaded, signature_method_name_check=False):
    """Replays a version's warmup records on it; returns how many ran.

    `signature_method_name_check`: classify records need the classify method
    name (`--enable_signature_method_name_check`).

    Raises:
        ServingError: the first failure, which fails the load.
    """
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(loaded.export_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    count = 0
    for record in _records(path):
        if count >= MAX_NUM_RECORDS:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Number of warmup records exceeds the maximum ({MAX_NUM_RECORDS}) "
                f"at {path}",
            )
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except DecodeError:
            raise ServingError(
                "INVALID_ARGUMENT", f"Failed to parse warmup record from {path}"
            ) from None
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            predict.run_request(log.predict_log.request, loaded)
        elif kind == "classify_log":
            classify.run_request(
                log.classify_log.request,
                loaded,
                method_name_check=signature_method_name_check,
            )
        elif kind in _UNSUPPORTED:
            raise ServingError(
                "UNIMPLEMENTED",
                f"Unsupported log_type for warmup: {_UNSUPPORTED[kind]}",
            )
        elif kind in _NOT_HERE:
            raise ServingError(
                "UNIMPLEMENTED",
                f"Warmup record {count}: {kind} needs an API this server does not "
                "have (only Predict and Classify).",
            )
        count += 1
    return count
