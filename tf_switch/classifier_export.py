"""SavedModel export of a classifier (`SwitchEncoder`, `SwitchViT`) for TF Serving.

    from tf_switch.classifier_export import ImageInput, TextInput, export_classifier
    path = export_classifier(model, TextInput(tokenizer), labels, "exports", "genre")
    # exports/genre/1/, written atomically; :predict and :classify both work

Signatures (float32 / int32 / string in and out, every output batch-major;
`<input>` is `text <string>[batch]` for a `TextInput`, `pixels
<float32>[batch, height, width, channels]` in [0, 1] for an `ImageInput`):

- `serving_default` (predict): `<input>` -> `probabilities <float32>[batch,
  num_classes]`, `class_id <int32>[batch]` and `label <string>[batch]` (the
  most probable class).
- `classify` (method `tensorflow/serving/classify`, what TF Serving's
  `:classify` REST endpoint and gRPC `Classify` run): `inputs
  <string>[batch]`, serialized `tf.Example`s with one feature named like
  the input (`text`: one bytes value; `pixels`: height*width*channels floats,
  row-major) -> `classes <string>[batch, num_classes]` (the label names) and
  `scores <float32>[batch, num_classes]` (their probabilities).
- `route` (predict; not in the export of a dense model): `<input>` ->
  `expert <int32>[batch, tokens, layers]` (each Switch layer's expert for
  each token: a word piece, or a patch in row-major order; -1 for padding)
  and `probability <float32>[batch, tokens, layers]`; a `TextInput` adds
  `token_ids <int32>[batch, tokens]`.

The served copy routes each example as its own group and dropless
(`tf_switch.models.decoding.inference_model`), so an example's answer does
not depend on the rest of its batch. Inputs are checked in the graph (an
INVALID_ARGUMENT error, HTTP 400): a text longer than the model's positions
is refused, never cut; pixels must be finite and in [0, 1]; an Example
whose feature is missing or of the wrong size is refused by the parser.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_switch import text
from tf_switch.export import new_version_dirs, write_warmup_requests
from tf_switch.models.decoding import inference_model
from tf_switch.models.routes import route_tokens
from tf_switch.signature_methods import CLASSIFY_METHOD_NAME, set_method_names


class TextInput:
    """Raw strings in, tokenized in the graph with the model's WordPiece
    vocabulary, right-padded with [PAD] to the model's positions."""

    name = "text"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def spec(self, model):
        return tf.TensorSpec([None], tf.string, self.name)

    def feature(self, model):
        return tf.io.FixedLenFeature([], tf.string)

    def token_ids(self, model, strings):
        """`<int32>[batch, positions]`, after checking each text fits."""
        ids = self.tokenizer.tokenize(strings)
        positions = model.config.sequence_length
        longest = tf.reduce_max(ids.row_lengths())
        check = tf.debugging.assert_less_equal(
            longest,
            tf.constant(positions, tf.int64),
            message=(
                f"a text has more word pieces than the model's {positions} "
                "positions; send shorter passages (nothing is cut)"
            ),
        )
        with tf.control_dependencies([check]):
            return ids.to_tensor(default_value=text.PAD_ID, shape=[None, positions])

    def model_inputs(self, model, strings):
        return self.token_ids(model, strings)

    def warmup_value(self, model):
        return np.array([b"warm up"], dtype=object)


class ImageInput:
    """Pixels in, `[batch, height, width, channels]` float32 in [0, 1]."""

    name = "pixels"

    def spec(self, model):
        return tf.TensorSpec(
            [None, *model.image_size, model.channels], tf.float32, self.name
        )

    def feature(self, model):
        size = int(np.prod(model.image_size)) * model.channels
        return tf.io.FixedLenFeature([size], tf.float32)

    def model_inputs(self, model, pixels):
        pixels = tf.reshape(pixels, [-1, *model.image_size, model.channels])
        checks = [
            tf.debugging.assert_all_finite(pixels, "pixels must be finite"),
            tf.debugging.Assert(
                tf.reduce_all((pixels >= 0) & (pixels <= 1)),
                ["pixels must be in [0, 1] (grey values divided by 255)"],
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(pixels)

    def warmup_value(self, model):
        return np.zeros((1, *model.image_size, model.channels), np.float32)


class ClassifierModule(tf.Module):
    """The served copy of a classifier, its input and its signatures."""

    def __init__(self, model, model_input, labels):
        super().__init__(name="switch_classifier")
        self.model = inference_model(model)
        self.model_input = model_input
        if len(labels) != self.model.num_classes:
            raise ValueError(
                f"{len(labels)} labels for a model with {self.model.num_classes} "
                "classes; pass one name per class."
            )
        self.labels = tf.constant([str(label) for label in labels])
        spec = model_input.spec(self.model)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.route = tf.function(self._route, input_signature=[spec])
        self.classify = tf.function(
            self._classify,
            input_signature=[tf.TensorSpec([None], tf.string, "inputs")],
        )

    def _probabilities(self, values):
        inputs = self.model_input.model_inputs(self.model, values)
        return tf.nn.softmax(self.model(inputs, training=False), axis=-1)

    def _serve(self, values):
        probabilities = self._probabilities(values)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "class_id": class_id,
            "label": tf.gather(self.labels, class_id),
        }

    def _classify(self, inputs):
        name = self.model_input.name
        features = tf.io.parse_example(
            inputs, {name: self.model_input.feature(self.model)}
        )
        probabilities = self._probabilities(features[name])
        batch = tf.shape(probabilities)[0]
        return {
            "classes": tf.tile(self.labels[None], [batch, 1]),
            "scores": probabilities,
        }

    def _route(self, values):
        inputs = self.model_input.model_inputs(self.model, values)
        padding_mask = None
        if isinstance(self.model_input, TextInput):
            padding_mask = tf.not_equal(inputs, self.model.padding_id)
        expert, probability = route_tokens(self.model, inputs, padding_mask)
        outputs = {"expert": expert, "probability": probability}
        if padding_mask is not None:
            outputs["token_ids"] = inputs
        return outputs


def export_classifier(
    model, model_input, labels, base_dir, model_name="classifier", version=None
):
    """Writes `<base_dir>/<model_name>/<version>/` for TensorFlow Serving.

    Args:
        model: a trained `SwitchEncoder` (with `TextInput`) or `SwitchViT`
            (with `ImageInput`), any dtype policy.
        model_input: `TextInput(tokenizer)` or `ImageInput()`.
        labels: the class names, one per class, in class-id order.
        base_dir: the parent of the model's directory (TF Serving's
            `--model_base_path` is `base_dir/model_name`).
        model_name: the served model's name.
        version: an int; default the next free version.

    Returns:
        The version directory, written to a temporary directory beside it and
        renamed into place.
    """
    final_dir, temporary = new_version_dirs(base_dir, model_name, version)
    module = ClassifierModule(model, model_input, labels)
    archive = keras.export.ExportArchive()  # see tf_switch.export
    archive.track(module.model)
    if isinstance(model_input, TextInput):
        archive.track(model_input.tokenizer)
    endpoints = {"serving_default": module.serve, "classify": module.classify}
    if module.model.config.num_experts is not None:
        endpoints["route"] = module.route
    for name, function in endpoints.items():
        archive.add_endpoint(name, function)
    archive.write_out(temporary, verbose=False)
    set_method_names(temporary, {"classify": CLASSIFY_METHOD_NAME})
    predict_signatures = [name for name in endpoints if name != "classify"]
    warmup = {model_input.name: model_input.warmup_value(module.model)}
    write_warmup_requests(temporary, model_name, predict_signatures, warmup)
    os.rename(temporary, final_dir)
    return final_dir
