"""TF Serving's Classify on a loaded version (`classifier.cc`, `util.cc`).

A `ClassificationRequest` (gRPC `Classify`; REST `:classify` once
`serving.json_classify` has read its JSON; a warmup `classify_log`) runs as
TF Serving's `RunClassify` runs it:

1. The signature: `model_spec.signature_name`, or "serving_default"; an
   unknown name is INVALID_ARGUMENT "No signature was found with the name:
   x" (predict's is FAILED_PRECONDITION). With `method_name_check` (TF
   Serving's `--enable_signature_method_name_check`, off by default) its
   method_name must be "tensorflow/serving/classify"; whatever the method,
   it needs exactly one input, named `inputs`, and one or two outputs, of
   which `classes` and/or `scores` (`PreProcessClassification`). So by
   default a predict-method signature of that shape is served too.
2. The input (`InputToSerializedExampleTensor`): the examples serialized
   into a `<string>[num_examples]` tensor fed to `inputs`. With a context
   (`example_list_with_context`) each example is the context's bytes
   followed by the example's, so parsing merges them and an example's
   feature replaces the context's feature of the same name. No example is
   INVALID_ARGUMENT "Input is empty."; an `inputs` that is not a string
   tensor refuses the feed as a session does ("Expects arg[0] to be int32
   but string is provided").
3. The outputs (`PostProcessClassificationResult`): `classes`
   `<string>[num_examples, num_classes]`, `scores` `<float32>[num_examples,
   num_classes]`, the two agreeing on num_classes; anything else is
   INVALID_ARGUMENT with TF Serving's message.
4. The result: for each example, num_classes (label, score) pairs; without
   `classes` every label is "", without `scores` every score 0.

Limits that TF Serving does not have: the examples may not take more than
`max_example_bytes` once the context is copied into each (a 1 MiB context
with 100,000 empty examples would be 100 GB), and the answer must fit the
server's `ResponseBudget`, checked before the run (num_classes from the
signature, labels counted empty) and after it (the real labels), before
anything is encoded.

Labels are `string` fields of the result proto, so a label that is not
UTF-8 is sent with U+FFFD in place of its invalid bytes (TF Serving copies
the bytes, which its own JSON writer and proto3 clients then choke on).
"""

from typing import NamedTuple

import numpy as np

from .saved_model import (
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD_NAME,
    CLASSIFY_OUTPUT_CLASSES,
    CLASSIFY_OUTPUT_SCORES,
    DEFAULT_SIGNATURE,
)
from .status import invalid

# The merged examples may take this many times the request limit.
EXAMPLE_BYTES_PER_BODY_BYTE = 16
ADVICE = "Send fewer examples, or use a signature with fewer classes."


class Classification(NamedTuple):
    """A run's checked outputs: `classes` (`<object>[N, C]` of bytes) and
    `scores` (`<float32>[N, C]`), either one None when the signature lacks it."""

    classes: np.ndarray | None
    scores: np.ndarray | None

    @property
    def shape(self):
        """(num_examples, num_classes)."""
        array = self.classes if self.classes is not None else self.scores
        return array.shape

    def labels(self):
        """`<object>[N, C]` labels as text ("" without `classes`)."""
        if self.classes is None:
            return np.full(self.shape, "", dtype=object)
        return np.vectorize(_text, otypes=[object])(self.classes)

    def score_values(self):
        """`<float32>[N, C]` scores (0 without `scores`)."""
        if self.scores is None:
            return np.zeros(self.shape, np.float32)
        return self.scores


def _text(label):
    if isinstance(label, str):
        return label
    return bytes(label).decode("utf-8", errors="replace")


# --- 1. The signature ---------------------------------------------------------


def _debug_string(signature):
    from google.protobuf import text_format

    return text_format.MessageToString(signature)


def check_signature(signature, method_name_check=False):
    """INVALID_ARGUMENT unless `signature` can classify
    (`PreProcessClassification`, and the method name when checked)."""
    if method_name_check and signature.method_name != CLASSIFY_METHOD_NAME:
        raise invalid(
            "Expected classification signature method_name to be "
            f"{CLASSIFY_METHOD_NAME}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid(
            "No classification inputs found in SignatureDef: "
            + _debug_string(signature)
        )
    outputs = signature.outputs
    if CLASSIFY_OUTPUT_CLASSES not in outputs and CLASSIFY_OUTPUT_SCORES not in outputs:
        raise invalid(
            "Expected classification signature outputs to contain at least one "
            f'of "{CLASSIFY_OUTPUT_CLASSES}" or "{CLASSIFY_OUTPUT_SCORES}". '
            f"Signature was: {_debug_string(signature)}"
        )


def classification_signature(loaded, signature_name, method_name_check=False):
    """(name, SignatureDef) of the signature a request names, checked
    (`GetClassificationSignatureDef`)."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in loaded.signature_defs:
        raise invalid(f"No signature was found with the name: {name}")
    signature = loaded.signature_defs[name]
    check_signature(signature, method_name_check)
    return name, signature


# --- 2. The input -------------------------------------------------------------


def serialized_examples(input_proto, max_bytes=None):
    """`<object>[num_examples]` serialized examples of an `Input`, the
    context's bytes before each example's; INVALID_ARGUMENT when there is
    none, or when they would take more than `max_bytes`."""
    kind = input_proto.WhichOneof("kind")
    context = b""
    if kind == "example_list":
        examples = input_proto.example_list.examples
    elif kind == "example_list_with_context":
        examples = input_proto.example_list_with_context.examples
        context = input_proto.example_list_with_context.context.SerializeToString()
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    serialized = [example.SerializeToString() for example in examples]
    total = len(context) * len(serialized) + sum(len(s) for s in serialized)
    if max_bytes is not None and total > max_bytes:
        raise invalid(
            f"The {len(serialized)} examples take {total} bytes once the context "
            f"({len(context)} bytes) is copied into each, over this server's limit "
            f"of {max_bytes} bytes ({EXAMPLE_BYTES_PER_BODY_BYTE} x "
            "--max_body_bytes). Send fewer examples or a smaller context."
        )
    array = np.empty(len(serialized), dtype=object)
    array[:] = [context + s for s in serialized] if context else serialized
    return array


def _check_input_dtype(signature):
    import tensorflow as tf

    dtype = tf.as_dtype(signature.inputs[CLASSIFY_INPUTS].dtype)
    if dtype != tf.string:
        # What a session answers when the string feed meets another dtype.
        raise invalid(f"Expects arg[0] to be {dtype.name} but string is provided")


# --- 3. The outputs -----------------------------------------------------------


def _dtype_name(array):
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    if array.dtype.kind in "SUO":
        return "DT_STRING"
    return types_pb2.DataType.Name(tf.as_dtype(array.dtype).as_datatype_enum)


def check_outputs(signature, num_examples, outputs):
    """The `Classification` of a run's outputs, checked as
    `PostProcessClassificationResult` checks them."""
    found = {}
    for name, dtype_name in (
        (CLASSIFY_OUTPUT_CLASSES, "DT_STRING"),
        (CLASSIFY_OUTPUT_SCORES, "DT_FLOAT"),
    ):
        if name not in signature.outputs:
            continue
        array = np.asarray(outputs[name])
        if array.ndim != 2:
            shape = ",".join(str(size) for size in array.shape)
            raise invalid(
                f"Expected Tensor shape: [batch_size num_classes] but got [{shape}]"
            )
        if _dtype_name(array) != dtype_name:
            raise invalid(
                f"Expected {name} Tensor of {dtype_name}. Got: {_dtype_name(array)}"
            )
        if array.shape[0] != num_examples:
            raise invalid(
                f"Expected {name} output batch size of {num_examples}. "
                f"Got: {array.shape[0]}"
            )
        found[name] = array
    classes = found.get(CLASSIFY_OUTPUT_CLASSES)
    scores = found.get(CLASSIFY_OUTPUT_SCORES)
    if classes is not None and scores is not None:
        if classes.shape[1] != scores.shape[1]:
            raise invalid(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}"
            )
    return Classification(classes, scores)


# --- The answer's size ----------------------------------------------------------


def _signature_classes(signature):
    """num_classes as the signature's shapes tell it (1 when they do not)."""
    sizes = [1]
    for name in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES):
        if name in signature.outputs:
            shape = signature.outputs[name].tensor_shape
            if not shape.unknown_rank and len(shape.dim) == 2:
                sizes.append(shape.dim[1].size)
    return max(sizes)


def answer_sizes(encoding, num_examples, num_classes, label_bytes=0):
    """[(bytes, name, shape, dtype)] of a result at its widest: each class is
    `["label", score]` in JSON (a float32 in at most 15 characters; a label
    byte at most 6, as an escape) or a `Class` message in the proto;
    `label_bytes` is the labels' total length."""
    classes = num_examples * num_classes
    if encoding == "json":
        labels = 6 * label_bytes + classes * 8 + num_examples * 4
        scores = classes * 16
    else:
        labels = label_bytes + classes * 11 + num_examples * 6
        scores = classes * 5
    shape = [num_examples, num_classes]
    return [(labels, "labels", shape, "string"), (scores, "scores", shape, "float32")]


def _budget_kind(budget):
    return "JSON" if budget.encoding == "json" else "ClassificationResult proto"


# --- A request ------------------------------------------------------------------


def run_classify(
    request, loaded, method_name_check=False, budget=None, max_example_bytes=None
):
    """Checks and runs a `ClassificationRequest` on `loaded`.

    Args:
        request: a `classification_pb2.ClassificationRequest`.
        loaded: the `serving.servable.LoadedVersion` to run.
        method_name_check: require the classify method name.
        budget: a `serving.responses.ResponseBudget` for the answer, or None.
        max_example_bytes: the most bytes the serialized examples may take.

    Returns:
        (signature name, `Classification`).
    """
    signature_name, signature = classification_signature(
        loaded, request.model_spec.signature_name, method_name_check
    )
    examples = serialized_examples(request.input, max_example_bytes)
    _check_input_dtype(signature)
    num_examples = len(examples)
    if budget is not None:
        sizes = answer_sizes(
            budget.encoding, num_examples, _signature_classes(signature)
        )
        budget.check_sizes(
            sizes, loaded, "the request was not run.", ADVICE, _budget_kind(budget)
        )
    outputs = loaded.run(signature_name, {CLASSIFY_INPUTS: examples})
    result = check_outputs(signature, num_examples, outputs)
    if budget is not None:
        label_bytes = 0
        if result.classes is not None:
            label_bytes = sum(len(label) for label in result.classes.ravel())
        sizes = answer_sizes(budget.encoding, *result.shape, label_bytes)
        budget.check_sizes(
            sizes, loaded, "nothing was encoded.", ADVICE, _budget_kind(budget)
        )
    return signature_name, result


def make_response(model_name, loaded, signature_name, result):
    """The `ClassificationResponse` of a run (`MakeModelSpec`: the name, the
    signature actually run, the version)."""
    from tensorflow_serving.apis import classification_pb2

    response = classification_pb2.ClassificationResponse()
    response.model_spec.name = model_name
    response.model_spec.signature_name = signature_name
    response.model_spec.version.value = loaded.version
    labels, scores = result.labels(), result.score_values()
    for row in range(result.shape[0]):
        classifications = response.result.classifications.add()
        for label, score in zip(labels[row], scores[row], strict=True):
            classifications.classes.add(label=label, score=float(score))
    return response


def run_request(request, loaded, **options):
    """`run_classify`, then `make_response` (the warmup replay's path)."""
    signature_name, result = run_classify(request, loaded, **options)
    return make_response(request.model_spec.name, loaded, signature_name, result)
