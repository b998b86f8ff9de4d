"""One loaded version of a model: its SavedModel and its signatures.

`LoadedVersion(export_dir, version)` loads with `tf.saved_model.load` (after
`import tensorflow_text`, whose ops the export uses) and runs a signature on
numpy inputs, checking their shapes the way TF Serving's session feed does.
Graph errors come back as `ServingError`s with TF's status code and a message
cleaned of stacks, node names and paths.
"""

import numpy as np

from .saved_model import serving_signatures
from .status import ServingError, from_op_error


class LoadedVersion:
    """One loaded version: the SavedModel, its SignatureDefMap, its number."""

    def __init__(self, export_dir, version):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

        self.version = version
        self.export_dir = export_dir
        self.signature_defs = serving_signatures(export_dir)
        self.model = tf.saved_model.load(export_dir)
        self.functions = dict(self.model.signatures)

    def input_dtypes(self, signature_name):
        import tensorflow as tf

        signature = self.signature_defs[signature_name]
        return {
            key: tf.as_dtype(info.dtype).name for key, info in signature.inputs.items()
        }

    def signature_def_map(self):
        """The signatures as a `tensorflow_serving.apis` `SignatureDefMap`."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        return signature_map

    def check_shapes(self, signature_name, inputs):
        """INVALID_ARGUMENT unless each input fits its signature's shape.

        TF Serving feeds the session, whose placeholders refuse a wrong rank
        or a wrong fixed dimension; a concrete function would raise a Python
        TypeError instead, so the check is made here first.
        """
        signature = self.signature_defs[signature_name]
        for name, value in sorted(inputs.items()):
            shape = signature.inputs[name].tensor_shape
            if shape.unknown_rank:
                continue
            expected = [dim.size for dim in shape.dim]
            got = list(np.shape(value))
            fits = len(got) == len(expected) and all(
                e in (-1, g) for e, g in zip(expected, got, strict=True)
            )
            if not fits:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"input '{name}' must have shape {expected} (-1: any size, "
                    f"rank {len(expected)}), but it has shape {got} (rank "
                    f"{len(got)}).",
                )

    def run(self, signature_name, inputs):
        """Runs a signature on numpy inputs; returns {output: numpy array}."""
        import tensorflow as tf

        self.check_shapes(signature_name, inputs)
        try:
            outputs = self.functions[signature_name](
                **{key: tf.constant(value) for key, value in inputs.items()}
            )
            return {key: value.numpy() for key, value in outputs.items()}
        except tf.errors.OpError as error:
            raise from_op_error(error) from error
