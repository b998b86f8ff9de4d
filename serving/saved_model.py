"""Reading a SavedModel's signatures, and checking a request against them.

`read_meta_graph(export_dir)` is the "serve" MetaGraphDef as TF Serving's
loader picks it; `prepare_request` checks a request's input keys the way
TF Serving's `predict_util.cc` does before it runs the session, with the same
status codes (an unknown signature is FAILED_PRECONDITION, missing or unknown
input keys are INVALID_ARGUMENT).

No TensorFlow Python import at module level: the C API child processes of
`serving.fidelity` import this module.
"""

import os

import numpy as np

from .status import ServingError

SERVE_TAG = "serve"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
# TF Serving's signature_constants (as tf_switch.signature_methods, which
# these child-process-safe modules do not import).
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
DEFAULT_SIGNATURE = "serving_default"
# TF2 SavedModels keep their init op under this key; TF Serving hides it.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def read_meta_graph(export_dir, tags=(SERVE_TAG,)):
    """The MetaGraphDef whose tag set is `tags`, as the loader picks it."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    path = os.path.join(export_dir, "saved_model.pb")
    if os.path.exists(path):
        with open(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:  # The loader also reads the text form.
        with open(path + "txt") as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(
        "NOT_FOUND",
        f"No MetaGraph with tags {sorted(tags)} in {export_dir}; found {found}.",
    )


def prepare_request(signature_def_map, signature_name, inputs):
    """Checks a request as predict_util.cc does; returns (feeds, aliases, names)."""
    if signature_name not in signature_def_map:
        raise ServingError(
            "FAILED_PRECONDITION",
            f'Serving signature key "{signature_name}" not found.',
        )
    signature = signature_def_map[signature_name]
    expected = sorted(signature.inputs)
    if len(inputs) != len(signature.inputs):
        sent = sorted(inputs)
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}.",
        )
    feeds = {}
    for alias, value in inputs.items():
        if alias not in signature.inputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input tensor alias not found in signature: {alias}. Inputs "
                f"expected to be in the set {{{','.join(expected)}}}.",
            )
        feeds[signature.inputs[alias].name] = np.asarray(value)
    aliases = list(signature.outputs)
    return feeds, aliases, [signature.outputs[a].name for a in aliases]


def serving_signatures(export_dir):
    """{name: SignatureDef} of the "serve" MetaGraph, without the init op."""
    signatures = read_meta_graph(export_dir).signature_def
    return {
        name: signature
        for name, signature in signatures.items()
        if name != INIT_OP_SIGNATURE
    }
