"""Which expert each token of a model took: the `route` signatures' core."""

import keras
import tensorflow as tf


def route_tokens(model, inputs, padding_mask=None):
    """Each Switch layer's expert and router probability per token.

    Runs `model`'s layers up to its first block (embeddings: word pieces or
    patches), then every `block_<i>` with `return_router_stats=True`.

    Args:
        model: a `SwitchLanguageModel`, `SwitchEncoder` or `SwitchViT`.
        inputs: what the model takes (token ids or pixels).
        padding_mask: bool `[batch, tokens]`, false at padding (an encoder's).

    Returns:
        `(expert <int32>, probability <float32>)`, each `[batch, tokens,
        Switch layers]`; expert -1 where a token was dropped or is padding.

    Raises:
        ValueError: the model has no Switch layer.
    """
    block_input = model.get_layer("block_0").input
    if isinstance(block_input, list):  # [hidden, padding_mask] in an encoder
        block_input = block_input[0]
    hidden = keras.Model(model.input, block_input)(inputs, training=False)
    experts, probabilities = [], []
    for index in range(model.config.num_layers):
        block = model.get_layer(f"block_{index}")
        hidden, stats = block(
            hidden,
            padding_mask=padding_mask,
            training=False,
            return_router_stats=True,
        )
        if stats is not None:
            experts.append(stats["token_expert"])
            probabilities.append(stats["token_probability"])
    if not experts:
        raise ValueError("The model has no Switch layer: there is no routing to show.")
    return tf.stack(experts, axis=-1), tf.stack(probabilities, axis=-1)
