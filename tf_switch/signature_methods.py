"""Signature method names that TF2's SavedModel writer cannot set.

TF Serving's `Classify` and `Regress` APIs (REST `:classify` / `:regress`,
gRPC `Classify` / `Regress`) run only a signature whose `method_name` is
`tensorflow/serving/classify` (or `.../regress`), with one string input
`inputs` (serialized `tf.Example`s) and outputs `classes <string>[batch,
num_classes]` and/or `scores <float32>[batch, num_classes]`
(`tensorflow_serving/servables/tensorflow/classifier.cc`). `tf.saved_model.save`
and Keras' `ExportArchive` write every signature as
`tensorflow/serving/predict`; `tf.saved_model.load` and the TF1 loader ignore
the method name, so rewriting it in `saved_model.pb` after the write is safe
and is what makes `:classify` work.

Example:

>>> import tempfile, tensorflow as tf
>>> class Scores(tf.Module):
...     @tf.function(input_signature=[tf.TensorSpec([None], tf.string, "inputs")])
...     def classify(self, inputs):
...         batch = tf.shape(inputs)[0]
...         return {"scores": tf.ones([batch, 2]),
...                 "classes": tf.fill([batch, 2], "yes")}
>>> path = tempfile.mkdtemp()
>>> module = Scores()
>>> tf.saved_model.save(module, path, signatures={"classify": module.classify})
>>> set_method_names(path, {"classify": CLASSIFY_METHOD_NAME})
>>> read_method_names(path)["classify"]
'tensorflow/serving/classify'
"""

import os

CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_INPUTS = "inputs"  # kClassifyInputs
CLASSIFY_OUTPUT_CLASSES = "classes"  # kClassifyOutputClasses
CLASSIFY_OUTPUT_SCORES = "scores"  # kClassifyOutputScores


def _read(export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def read_method_names(export_dir):
    """{signature name: method_name} of the "serve" MetaGraph."""
    saved_model = _read(export_dir)
    return {
        name: signature.method_name
        for meta_graph in saved_model.meta_graphs
        if "serve" in meta_graph.meta_info_def.tags
        for name, signature in meta_graph.signature_def.items()
    }


def set_method_names(export_dir, methods):
    """Rewrites the `method_name` of the named signatures in `saved_model.pb`.

    Args:
        export_dir: a SavedModel directory (written, not yet served).
        methods: {signature name: method name}.

    Raises:
        KeyError: a named signature is not in the "serve" MetaGraph.
    """
    saved_model = _read(export_dir)
    for meta_graph in saved_model.meta_graphs:
        if "serve" not in meta_graph.meta_info_def.tags:
            continue
        for name, method in methods.items():
            if name not in meta_graph.signature_def:
                raise KeyError(
                    f"{export_dir} has no signature {name!r}; it has "
                    f"{sorted(meta_graph.signature_def)}."
                )
            meta_graph.signature_def[name].method_name = method
    path = os.path.join(export_dir, "saved_model.pb")
    with open(path + ".tmp", "wb") as f:
        f.write(saved_model.SerializeToString())
    os.replace(path + ".tmp", path)
