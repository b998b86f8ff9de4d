"""Bidirectional Switch encoder with a classification head."""

import keras

from tf_switch.models.config import ModelConfig
from tf_switch.models.language_model import embed_tokens, transformer_stack


@keras.saving.register_keras_serializable(package="tf_switch")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean over the valid (non-padding) positions of `[batch, length, d]`."""

    def call(self, inputs, padding_mask):
        mask = keras.ops.cast(padding_mask, inputs.dtype)[..., None]
        total = keras.ops.sum(inputs * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchEncoder(keras.Model):
    """A bidirectional Switch transformer that classifies token sequences.

    The stack of `SwitchLanguageModel` without the causal mask; padding
    (token id `padding_id`) is never attended to and takes no expert slot;
    the valid tokens' mean goes through a dense head to class logits.

    Args:
        config: a `ModelConfig` or its dict.
        num_classes: classifier outputs.
        padding_id: the token id that marks padding; default 0.

    Call arguments:
        token_ids: `<int32>[batch, sequence_length]`.

    Returns:
        `<float32>[batch, num_classes]` logits.

    Example:

    >>> from tf_switch.models import get_preset
    >>> model = SwitchEncoder(get_preset("tiny", num_layers=2), num_classes=3)
    >>> model(keras.ops.ones((2, 64), "int32")).shape
    TensorShape([2, 3])
    """

    def __init__(self, config, num_classes, padding_id=0, **kwargs):
        if isinstance(config, dict):
            config = ModelConfig(**config)
        token_ids = keras.Input(
            (config.sequence_length,), dtype="int32", name="token_ids"
        )
        padding_mask = keras.ops.not_equal(token_ids, padding_id)
        _, hidden = embed_tokens(config, token_ids)
        hidden = transformer_stack(
            config, hidden, causal=False, padding_mask=padding_mask
        )
        pooled = MaskedMeanPooling(name="pooling")(hidden, padding_mask=padding_mask)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="classifier")(
            pooled
        )
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)
        self.config = config
        self.num_classes = num_classes
        self.padding_id = padding_id

    def get_config(self):
        return {
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "padding_id": self.padding_id,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
