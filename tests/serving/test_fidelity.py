"""Serving fidelity: the C API and TF1 runners, the op allow-list, the lint.

Each runner must give what `tf.saved_model.load` gives, reject what TF
Serving rejects with the same status code, and the checks must flag what the
server cannot serve.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from serving import fidelity
from serving.status import ServingError
from tf_switch import text

VOCAB_SIZE = 16
HIDDEN_DIM = 4

RUNNERS = {
    "c_api": fidelity.run_signature_c_api,
    "c_api_in_process": functools.partial(fidelity.run_signature_c_api, isolated=False),
    "tf1": fidelity.run_signature_tf1,
}


@pytest.fixture(params=sorted(RUNNERS))
def run_signature(request):
    return RUNNERS[request.param]


def _reference(export_dir, signature_name, inputs):
    """What `tf.saved_model.load` gives, as numpy."""
    signature = tf.saved_model.load(str(export_dir)).signatures[signature_name]
    outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
    return {key: value.numpy() for key, value in outputs.items()}


def _assert_same_outputs(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


class IdsModel(tf.Module):
    """Token ids in, embeddings and lengths out; negative ids are rejected."""

    def __init__(self):
        super().__init__()
        self.embeddings = tf.Variable(
            tf.random.stateless_normal([VOCAB_SIZE, HIDDEN_DIM], seed=[1, 2])
        )

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")]
    )
    def serve(self, token_ids):
        checks = [
            tf.debugging.assert_non_negative(token_ids, message="ids must be >= 0"),
            tf.debugging.assert_less(token_ids, VOCAB_SIZE, message="id too big"),
        ]
        with tf.control_dependencies(checks):
            embeddings = tf.gather(self.embeddings, token_ids)  # [B, T, 4]
        lengths = tf.reduce_sum(tf.cast(token_ids > 0, tf.int32), axis=1)  # [B]
        return {"embeddings": embeddings, "lengths": lengths}


class TextModel(tf.Module):
    """Raw strings to padded WordPiece ids with tensorflow-text, and back."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def tokenize(self, strings):
        ids = self.tokenizer.tokenize(strings)  # <int32>[B, (T)]
        return {
            "token_ids": ids.to_tensor(default_value=text.PAD_ID),
            "num_tokens": tf.cast(ids.row_lengths(), tf.int32),
        }

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")]
    )
    def detokenize(self, token_ids):
        return {"text": self.tokenizer.detokenize(token_ids)}


class DtypesModel(tf.Module):
    """One input and output per dtype, ranks 1 to 3."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2, 3], tf.int64, name="int64s"),
            tf.TensorSpec([None], tf.float32, name="floats"),
            tf.TensorSpec([None, 1], tf.bool, name="bools"),
            tf.TensorSpec([None], tf.string, name="strings"),
        ]
    )
    def serve(self, int64s, floats, bools, strings):
        return {
            "int64s": int64s * 2,
            "floats": floats + 0.5,
            "bools": tf.logical_not(bools),
            "strings": tf.strings.join([strings, "!"]),
            "string_lengths": tf.strings.length(strings),
        }


def _save(module, directory, signatures):
    tf.saved_model.save(module, str(directory), signatures=signatures)
    return directory


@pytest.fixture(scope="module")
def ids_export(tmp_path_factory):
    model = IdsModel()
    directory = tmp_path_factory.mktemp("ids") / "1"
    return _save(model, directory, {"serving_default": model.serve})


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    corpus = ["The quick brown fox jumps over the lazy dog.\nA dog sleeps."] * 8
    model = TextModel(text.WordPieceTokenizer(text.build_vocabulary(corpus, 100)))
    directory = tmp_path_factory.mktemp("text") / "1"
    signatures = {"serving_default": model.tokenize, "detokenize": model.detokenize}
    return _save(model, directory, signatures)


@pytest.fixture(scope="module")
def dtypes_export(tmp_path_factory):
    model = DtypesModel()
    directory = tmp_path_factory.mktemp("dtypes") / "1"
    return _save(model, directory, {"serving_default": model.serve})


IDS = np.array([[1, 2, 3], [4, 0, 0]], np.int32)
SENTENCES = np.array([b"The lazy fox sleeps.", b"A quick dog jumps over the fox."])


def test_ids_model_matches_saved_model_load(run_signature, ids_export):
    outputs = run_signature(ids_export, "serving_default", {"token_ids": IDS})
    expected = _reference(ids_export, "serving_default", {"token_ids": IDS})
    _assert_same_outputs(outputs, expected)
    assert outputs["embeddings"].shape == (2, 3, HIDDEN_DIM)


def test_text_model_matches_saved_model_load(run_signature, text_export):
    outputs = run_signature(text_export, "serving_default", {"text": SENTENCES})
    expected = _reference(text_export, "serving_default", {"text": SENTENCES})
    _assert_same_outputs(outputs, expected)
    assert outputs["token_ids"].dtype == np.int32
    assert (outputs["token_ids"][0, outputs["num_tokens"][0] :] == 0).all()

    ids = outputs["token_ids"]
    detokenized = run_signature(text_export, "detokenize", {"token_ids": ids})
    assert list(detokenized["text"]) == list(SENTENCES)


def test_str_inputs_are_sent_as_utf8(run_signature, text_export):
    as_str = np.array([s.decode() for s in SENTENCES])
    outputs = run_signature(text_export, "serving_default", {"text": as_str})
    expected = run_signature(text_export, "serving_default", {"text": SENTENCES})
    _assert_same_outputs(outputs, expected)


@pytest.mark.parametrize("batch_size", [4, 0])
def test_every_dtype_round_trips(run_signature, dtypes_export, batch_size):
    strings = [b"", b"a\x00b", "h\u00e9llo".encode(), b"x" * 40][:batch_size]
    inputs = {
        "int64s": np.arange(batch_size * 6, dtype=np.int64).reshape(-1, 2, 3) - 7,
        "floats": np.linspace(-1, 1, batch_size, dtype=np.float32),
        "bools": (np.arange(batch_size) % 3 == 0).reshape(-1, 1),
        "strings": np.array(strings, dtype=object),
    }
    outputs = run_signature(dtypes_export, "serving_default", inputs)
    _assert_same_outputs(outputs, _reference(dtypes_export, "serving_default", inputs))
    if batch_size:
        assert outputs["strings"][1] == b"a\x00b!"  # Embedded NUL kept.
        assert outputs["strings"][3] == b"x" * 40 + b"!"  # A heap-allocated TString.


def test_negative_ids_are_invalid_argument(run_signature, ids_export):
    with pytest.raises(ServingError, match="ids must be >= 0") as error:
        run_signature(ids_export, "serving_default", {"token_ids": -IDS})
    assert error.value.code == "INVALID_ARGUMENT"


def test_out_of_vocabulary_ids_are_invalid_argument(run_signature, text_export):
    ids = np.array([[5, 1000]], np.int32)
    with pytest.raises(ServingError) as error:
        run_signature(text_export, "detokenize", {"token_ids": ids})
    assert error.value.code == "INVALID_ARGUMENT"


def test_wrong_dtype_is_invalid_argument_not_cast(run_signature, ids_export):
    with pytest.raises(ServingError, match="int32 but int64") as error:
        run_signature(ids_export, "serving_default", {"token_ids": IDS.astype(int)})
    assert error.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "signature_name, inputs, code, message",
    [
        ("predict", {"token_ids": IDS}, "FAILED_PRECONDITION", '"predict" not found'),
        ("serving_default", {}, "INVALID_ARGUMENT", "Missing but required: {token_"),
        ("serving_default", {"ids": IDS}, "INVALID_ARGUMENT", "alias not found"),
    ],
)
def test_requests_are_checked_like_predict_util(
    run_signature, ids_export, signature_name, inputs, code, message
):
    with pytest.raises(ServingError, match=message) as error:
        run_signature(ids_export, signature_name, inputs)
    assert error.value.code == code


def test_tensorflow_text_op_libraries_are_the_wheels_op_libraries():
    paths = fidelity.tensorflow_text_op_libraries()
    names = {path.rsplit("/", 1)[-1] for path in paths}
    assert {"_fast_wordpiece_tokenizer.so", "_regex_split_ops.so"} <= names
    assert "_text_similarity_metric_ops.so" in names
    assert len(names) == len(paths) >= 20


def test_op_registry_separates_core_and_text_ops():
    registry = fidelity.serving_op_registry()
    text_ops = set().union(*registry["text_ops"].values())
    # This process imported tensorflow_text; the registry's core list must not
    # see its ops, because a child process that never imports it read them.
    assert "FastWordpieceTokenizeWithOffsets" in text_ops
    assert "RegexSplitWithOffsets" in text_ops
    assert not text_ops & registry["core_ops"]
    assert {"MatMul", "StatefulPartitionedCall", "EagerPyFunc"} <= registry["core_ops"]
    assert "CPU" in registry["kernels"]["MatMul"]
    assert "EagerPyFunc" not in registry["kernels"]  # Its kernel is Python's.


def test_text_model_ops_are_servable(text_export):
    ops = fidelity.graph_ops(text_export)
    assert {"FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets"} <= ops
    assert "StatefulPartitionedCall" in ops
    assert fidelity.disallowed_ops(text_export) == set()


def test_ids_model_ops_are_servable(ids_export):
    assert {"ResourceGather", "Assert"} <= fidelity.graph_ops(ids_export)
    assert fidelity.disallowed_ops(ids_export) == set()


@pytest.fixture(scope="module")
def py_function_export(tmp_path_factory):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(x):
        y = tf.py_function(lambda v: v * 2.0, [x], tf.float32)
        return {"y": tf.reshape(y, [-1])}

    directory = tmp_path_factory.mktemp("py_function") / "1"
    return _save(tf.Module(), directory, {"serving_default": serve})


def test_py_function_is_flagged_and_does_not_serve(py_function_export):
    assert fidelity.disallowed_ops(py_function_export) == {"EagerPyFunc"}
    # The isolated C API process, like the server, has no kernel for it.
    with pytest.raises(ServingError, match="No OpKernel .* 'EagerPyFunc'"):
        fidelity.run_signature_c_api(
            py_function_export, "serving_default", {"x": np.ones([2], np.float32)}
        )


def test_lint_passes_clean_exports(ids_export, text_export, dtypes_export):
    for export_dir in (ids_export, text_export, dtypes_export):
        assert fidelity.signature_lint(export_dir) == []


def test_lint_flags_bfloat16_scalar_and_missing_default(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def predict(x):
        return {
            "logits": tf.cast(x, tf.bfloat16),  # [B, 3] but bfloat16.
            "loss": tf.reduce_mean(x),  # A scalar: no batch dimension.
            "fixed": tf.zeros([5]),  # Dim 0 of 5 is not the batch.
        }

    export_dir = _save(tf.Module(), tmp_path / "1", {"predict": predict})
    problems = fidelity.signature_lint(export_dir)
    assert len(problems) == 4, problems
    assert 'No "serving_default" signature' in problems[0]
    assert any('"logits" has dtype DT_BFLOAT16' in p for p in problems)
    assert any('"loss" is a scalar' in p for p in problems)
    assert any('"fixed" has a fixed dim 0 of 5' in p for p in problems)
    assert fidelity.main(["check", str(export_dir)]) == 1


def _with_method(ids_export, directory, method):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((ids_export / "saved_model.pb").read_bytes())
    signature = saved_model.meta_graphs[0].signature_def["serving_default"]
    signature.method_name = method
    (directory / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return directory


def test_lint_flags_a_non_predict_method_name(tmp_path, ids_export):
    _with_method(ids_export, tmp_path, "tensorflow/serving/regress")
    assert fidelity.signature_lint(tmp_path) == [
        'Signature "serving_default": method_name is '
        '"tensorflow/serving/regress", expected "tensorflow/serving/predict" (or '
        '"tensorflow/serving/classify" with the shape Classify runs).'
    ]


def test_lint_flags_a_classify_method_name_without_the_classify_shape(
    tmp_path, ids_export
):
    _with_method(ids_export, tmp_path, "tensorflow/serving/classify")
    where = 'Signature "serving_default": method_name is "tensorflow/serving/classify"'
    assert fidelity.signature_lint(tmp_path) == [
        f'{where}, but Classify feeds one input "inputs" DT_STRING [-1] (serialized '
        'tf.Examples); it has "token_ids" DT_INT32 [-1,-1]. Give it that input, or '
        'keep method_name "tensorflow/serving/predict".',
        f'{where}, but Classify needs one or two outputs, "classes" DT_STRING '
        'and/or "scores" DT_FLOAT, each [batch, num_classes] with the same '
        'num_classes; it has "embeddings" DT_FLOAT [-1,-1,4], "lengths" DT_INT32 '
        "[-1]. Give it those outputs, or keep method_name "
        '"tensorflow/serving/predict".',
    ]


@pytest.fixture(scope="module")
def classify_export(tmp_path_factory):
    from tests.serving.classify_models import save_classifier

    return save_classifier(tmp_path_factory.mktemp("classify") / "1")


def test_classify_signature_matches_saved_model_load(run_signature, classify_export):
    from tests.serving.classify_models import serialized

    context = serialized(color=[b"blue"], x=[0.25])
    examples = np.empty(3, dtype=object)
    # TF Serving's ExampleListWithContext: the context's bytes, then the example's.
    examples[:] = [
        serialized(x=[1.5], tags=[b"a", b"\x00b"]),
        context + serialized(n=[3]),
        b"",
    ]
    inputs = {"inputs": examples}
    actual = run_signature(classify_export, "classify", inputs)
    expected = _reference(classify_export, "classify", inputs)
    _assert_same_outputs(actual, expected)
    assert actual["classes"][1, 0] == b"blue"
    np.testing.assert_array_equal(actual["scores"][1], [0.25, 3.0, 0.0])


def test_lint_accepts_classify_signatures_of_the_classify_shape(classify_export):
    problems = fidelity.signature_lint(classify_export)
    flagged = sorted(problem.split('"')[1] for problem in problems)
    # classifier.cc refuses each of these (test_classify.py); the rest serve.
    assert flagged == [
        "double_scores",
        "int_classes",
        "int_inputs",
        "mismatch",
        "no_class_outputs",
        "rank1_scores",
        "three_outputs",
        "two_inputs",
    ]


def test_check_command_passes_a_servable_export(text_export, capsys):
    assert fidelity.main(["check", str(text_export)]) == 0
    assert "no problems" in capsys.readouterr().out
