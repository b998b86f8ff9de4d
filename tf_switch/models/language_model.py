"""Decoder-only Switch language model."""

import keras

from tf_switch.layers import SwitchBlock
from tf_switch.models.config import ModelConfig


@keras.saving.register_keras_serializable(package="tf_switch")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to `[batch, length, d]`."""

    def __init__(self, sequence_length, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, inputs):
        length = keras.ops.shape(inputs)[1]
        return inputs + self.position_embeddings[None, :length]

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length}


def transformer_stack(config, hidden, causal, padding_mask=None):
    """`config.num_layers` SwitchBlocks, sparse per `config.is_sparse`."""
    for index in range(config.num_layers):
        sparse = config.is_sparse(index)
        hidden = SwitchBlock(
            num_heads=config.num_heads,
            intermediate_dim=config.intermediate_dim,
            num_experts=config.num_experts if sparse else None,
            causal=causal,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation=config.activation,
            expert_dropout=config.expert_dropout,
            switch_options=config.switch_options if sparse else None,
            name=f"block_{index}",
        )(hidden, padding_mask=padding_mask)
    return keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(hidden)


def embed_tokens(config, token_ids):
    """Token + position embeddings and dropout; returns (embedding, hidden)."""
    token_embedding = keras.layers.ReversibleEmbedding(
        config.vocab_size,
        config.hidden_dim,
        tie_weights=config.tie_embeddings,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
        name="token_embedding",
    )
    hidden = token_embedding(token_ids)
    hidden = PositionEmbedding(config.sequence_length, name="position_embedding")(
        hidden
    )
    return token_embedding, keras.layers.Dropout(config.dropout)(hidden)


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchLanguageModel(keras.Model):
    """A causal (decoder-only) language model with Switch FFNs.

    Token and learned position embeddings, `num_layers` pre-LayerNorm
    `SwitchBlock`s with a Switch FFN in every `sparse_every`-th block (paper
    §2: every other FFN), a final LayerNorm and an output projection, tied to
    the token embedding by default. Logits are float32 under any policy.

    Args:
        config: a `ModelConfig` or its dict.

    Call arguments:
        token_ids: `<int32>[batch, sequence_length]`. Pad on the right: a
            causal model's outputs at earlier positions never see padding.

    Returns:
        `<float32>[batch, sequence_length, vocab_size]` next-token logits.

    Example:

    >>> from tf_switch.models import get_preset
    >>> model = SwitchLanguageModel(get_preset("tiny", num_layers=2))
    >>> model(keras.ops.zeros((2, 64), "int32")).shape
    TensorShape([2, 64, 2000])
    """

    def __init__(self, config, **kwargs):
        if isinstance(config, dict):
            config = ModelConfig(**config)
        token_ids = keras.Input(
            (config.sequence_length,), dtype="int32", name="token_ids"
        )
        token_embedding, hidden = embed_tokens(config, token_ids)
        hidden = transformer_stack(config, hidden, causal=True)
        logits = token_embedding(hidden, reverse=True)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
            logits
        )
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)
        self.config = config

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
