"""Perplexity as a Keras metric."""

import keras


@keras.saving.register_keras_serializable(package="tf_switch")
class Perplexity(keras.metrics.Mean):
    """exp(mean next-token cross-entropy) over the epoch, from logits.

    Unlike exp(loss), it leaves out the routers' auxiliary losses.
    """

    def __init__(self, name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True
        )
        super().update_state(cross_entropy, sample_weight=sample_weight)

    def result(self):
        return keras.ops.exp(super().result())
