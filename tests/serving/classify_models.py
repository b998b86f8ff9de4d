"""Tiny SavedModels with TF Serving classify signatures, for the serving tests.

`save_classifier(export_dir, bias=0.0)` writes one SavedModel whose
signatures cover what TF Serving's Classify accepts and refuses
(`classifier.cc`); each takes `inputs <string>[None]`, serialized
`tf.Example`s with the features

- `x`: one float (default 0), `n`: one int64 (default 0),
- `color`: one string (default "none"), `tags`: any number of strings,

and answers, for 3 classes, `classes = [color, "n", "tags"]` and
`scores = [x + bias, n, number of tags]`, so every feature value (and the
context merged into each example) shows in the result:

| signature | method | what TF Serving says |
|---|---|---|
| `serving_default`, `classify` | classify | classes and scores |
| `scores_only` / `classes_only` | classify | labels "" / scores 0 |
| `predict_shaped` | predict | served (method names are not checked by default) |
| `float_input` | predict | no `inputs` input |
| `two_inputs` | classify | "Expected one input Tensor." |
| `int_inputs` | classify | `inputs` is int32: the string feed is refused |
| `three_outputs` | classify | "Expected one or two output Tensors, found 3" |
| `no_class_outputs` | classify | neither `classes` nor `scores` |
| `double_scores` / `int_classes` | classify | wrong output dtype |
| `rank1_scores` | classify | scores `[batch]`, not `[batch, num_classes]` |
| `one_row` | classify | scores of batch 1 whatever the request |
| `mismatch` | classify | 3 classes, 2 scores |
| `wide` | classify | scores `[batch, 4096]` (static): a big answer |
| `n_scores` | classify | scores `[batch, n]` (n from the request): big only once run |
"""

import tensorflow as tf

from tf_switch.signature_methods import CLASSIFY_METHOD_NAME, set_method_names

FEATURES = {
    "x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    "n": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "color": tf.io.FixedLenFeature([], tf.string, default_value="none"),
    "tags": tf.io.VarLenFeature(tf.string),
}
NUM_CLASSES = 3
WIDE_CLASSES = 4096

_STRINGS = tf.TensorSpec([None], tf.string, name="inputs")


def _parse(inputs):
    return tf.io.parse_example(inputs, FEATURES)


class Classifier(tf.Module):
    """The signatures of the table above; `bias` is added to score 0."""

    def __init__(self, bias=0.0):
        super().__init__()
        self.bias = tf.Variable(bias, dtype=tf.float32, name="bias")

    def _result(self, inputs):
        features = _parse(inputs)
        batch = tf.shape(inputs)[0]
        tags = tf.sparse.to_dense(features["tags"], default_value="")
        num_tags = tf.reduce_sum(tf.cast(tags != "", tf.float32), axis=1)
        classes = tf.stack(
            [features["color"], tf.fill([batch], "n"), tf.fill([batch], "tags")],
            axis=1,
        )  # Shape: <string>[batch, 3]
        scores = tf.stack(
            [features["x"] + self.bias, tf.cast(features["n"], tf.float32), num_tags],
            axis=1,
        )  # Shape: <float32>[batch, 3]
        return classes, scores

    @tf.function(input_signature=[_STRINGS])
    def classify(self, inputs):
        classes, scores = self._result(inputs)
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[_STRINGS])
    def scores_only(self, inputs):
        return {"scores": self._result(inputs)[1]}

    @tf.function(input_signature=[_STRINGS])
    def classes_only(self, inputs):
        return {"classes": self._result(inputs)[0]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def float_input(self, x):
        return {"scores": tf.stack([x, x], axis=1)}

    @tf.function(input_signature=[_STRINGS, tf.TensorSpec([None], tf.string, "more")])
    def two_inputs(self, inputs, more):
        return {"scores": self._result(inputs)[1]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="inputs")])
    def int_inputs(self, inputs):
        return {"scores": tf.stack([tf.cast(inputs, tf.float32)] * 2, axis=1)}

    @tf.function(input_signature=[_STRINGS])
    def three_outputs(self, inputs):
        classes, scores = self._result(inputs)
        return {"classes": classes, "scores": scores, "extra": scores}

    @tf.function(input_signature=[_STRINGS])
    def no_class_outputs(self, inputs):
        classes, scores = self._result(inputs)
        return {"labels": classes, "probabilities": scores}

    @tf.function(input_signature=[_STRINGS])
    def double_scores(self, inputs):
        return {"scores": tf.cast(self._result(inputs)[1], tf.float64)}

    @tf.function(input_signature=[_STRINGS])
    def int_classes(self, inputs):
        scores = self._result(inputs)[1]
        return {"classes": tf.cast(scores, tf.int64), "scores": scores}

    @tf.function(input_signature=[_STRINGS])
    def rank1_scores(self, inputs):
        return {"scores": self._result(inputs)[1][:, 0]}

    @tf.function(input_signature=[_STRINGS])
    def one_row(self, inputs):
        return {"scores": self._result(inputs)[1][:1]}

    @tf.function(input_signature=[_STRINGS])
    def mismatch(self, inputs):
        classes, scores = self._result(inputs)
        return {"classes": classes, "scores": scores[:, :2]}

    @tf.function(input_signature=[_STRINGS])
    def wide(self, inputs):
        scores = self._result(inputs)[1]
        return {"scores": tf.tile(scores[:, :1], [1, WIDE_CLASSES])}

    @tf.function(input_signature=[_STRINGS])
    def n_scores(self, inputs):
        features = _parse(inputs)
        batch = tf.shape(inputs)[0]
        width = tf.cast(tf.reduce_max(features["n"]), tf.int32)
        return {"scores": tf.zeros([batch, width])}


# Signatures left with TF2's predict method name; every other is classify.
PREDICT_SIGNATURES = ("predict_shaped", "float_input")


def save_classifier(export_dir, bias=0.0):
    """Writes the classifier SavedModel to `export_dir`; returns the path."""
    module = Classifier(bias)
    signatures = {
        "serving_default": module.classify,
        "classify": module.classify,
        "predict_shaped": module.classify,
    }
    for name in (
        "scores_only classes_only float_input two_inputs int_inputs three_outputs "
        "no_class_outputs double_scores int_classes rank1_scores one_row mismatch "
        "wide n_scores"
    ).split():
        signatures[name] = getattr(module, name)
    export_dir = str(export_dir)
    tf.saved_model.save(module, export_dir, signatures=signatures)
    set_method_names(
        export_dir,
        {
            name: CLASSIFY_METHOD_NAME
            for name in signatures
            if name not in PREDICT_SIGNATURES
        },
    )
    return export_dir


def serialized(**features):
    """One `tf.Example` of `features` ({name: list of floats, ints or bytes}),
    serialized."""
    feature = {}
    for name, values in features.items():
        if all(isinstance(v, bytes) for v in values):
            feature[name] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=values)
            )
        elif all(isinstance(v, int) for v in values):
            feature[name] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=values)
            )
        else:
            feature[name] = tf.train.Feature(
                float_list=tf.train.FloatList(value=values)
            )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def image_examples(images):
    """Serialized tf.Examples of images, as a classifier export's `classify`
    takes them: one float list `pixels` per image, row-major."""
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "pixels": tf.train.Feature(
                        float_list=tf.train.FloatList(value=image.ravel())
                    )
                }
            )
        ).SerializeToString()
        for image in images
    ]
