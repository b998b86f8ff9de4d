"""A pre-LayerNorm transformer block with a Switch (or dense) FFN."""

import math

import keras
import tensorflow as tf

from tf_switch.layers.expert_ffn import ExpertFFN
from tf_switch.layers.switch_ffn import SwitchFFN
from tf_switch.options import SwitchOptions


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchBlock(keras.layers.Layer):
    """Transformer block: self-attention, then a Switch FFN, both pre-LN.

    `x = x + dropout(attention(layer_norm(x)))`, then
    `x = x + dropout(ffn(layer_norm(x)))`, where `ffn` is a `SwitchFFN` with
    `num_experts` experts, or, with `num_experts=None`, a dense FFN of the
    same `intermediate_dim`: the dense twin with the same FLOPs per token as
    a top-1 Switch block (paper §2, Figure 2).

    Args:
        num_heads: attention heads; must divide the hidden size.
        intermediate_dim: FFN hidden width (each expert's).
        num_experts: N, or None for the dense twin.
        causal: causal self-attention, and causal-safe routing.
        dropout: residual dropout rate.
        attention_dropout: dropout on attention probabilities.
        activation: FFN activation, `"relu"`, `"gelu"` or `"gated-gelu"`.
        expert_dropout: dropout inside the FFN (experts or dense); the paper
            fine-tunes with 0.4 in experts and 0.1 elsewhere (§3.3).
        layer_norm_epsilon: epsilon of both LayerNorms.
        switch_options: the Switch FFN's `tf_switch.options.SwitchOptions`
            (`top_k`, `capacity_factor`, `group_size`, `dispatch`,
            `jitter_noise`, ...), or a dict of its fields; only for a sparse
            block.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[batch, length, hidden]`.
        padding_mask: optional `<bool>[batch, length]`, false for padding:
            padding is never attended to and takes no expert slot.
        training: Python bool.
        return_router_stats: also return the FFN's routing statistics (None
            for a dense block).

    Returns:
        `[batch, length, hidden]`, or `(outputs, stats)`.

    Example:

    >>> block = SwitchBlock(num_heads=2, intermediate_dim=64, num_experts=4,
    ...                     causal=True)
    >>> block(keras.random.normal((2, 8, 32))).shape
    TensorShape([2, 8, 32])

    References:
        Fedus, Zoph & Shazeer, "Switch Transformers", arXiv 2101.03961, §2.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        num_experts=None,
        causal=False,
        dropout=0.0,
        attention_dropout=0.0,
        activation="relu",
        expert_dropout=0.0,
        layer_norm_epsilon=1e-6,
        switch_options=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_experts is None and switch_options:
            raise ValueError(
                "`switch_options` configure the Switch FFN, but num_experts=None "
                f"makes this block dense. Received: switch_options={switch_options}"
            )
        if num_experts is not None:
            switch_options = SwitchOptions.from_config(switch_options)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_experts = num_experts
        self.causal = causal
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.expert_dropout = expert_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.switch_options = switch_options
        self.supports_masking = True

        def layer_norm(name):
            return keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )

        self.attention_norm = layer_norm("attention_norm")
        self.ffn_norm = layer_norm("ffn_norm")
        self.attention_dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="attention_residual_dropout"
        )
        self.ffn_dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="ffn_residual_dropout"
        )
        if num_experts is None:
            self.ffn = ExpertFFN(
                1,
                intermediate_dim,
                activation=activation,
                expert_dropout=expert_dropout,
                dtype=self.dtype_policy,
                name="dense_ffn",
            )
        else:
            self.ffn = SwitchFFN(
                num_experts,
                intermediate_dim,
                activation=activation,
                expert_dropout=expert_dropout,
                causal=causal,
                dtype=self.dtype_policy,
                name=f"{self.name}_ffn",
                options=switch_options,
            )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"The hidden size {hidden_dim} must be divisible by num_heads="
                f"{self.num_heads}."
            )
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention_norm.build(input_shape)
        self.ffn_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        if self.num_experts is None:
            self.ffn.build((1, None, hidden_dim))
        else:
            self.ffn.build(input_shape)

    def call(self, inputs, padding_mask=None, training=None, return_router_stats=False):
        attention_mask = None
        if padding_mask is not None:
            padding_mask = tf.cast(padding_mask, tf.bool)
            # [B, 1, S]: no query attends to a padding key.
            attention_mask = padding_mask[:, None, :]
        normed = self.attention_norm(inputs)
        attended = self.attention(
            normed,
            normed,
            attention_mask=attention_mask,
            use_causal_mask=self.causal,
            training=training,
        )
        x = inputs + self.attention_dropout_layer(attended, training=training)

        ffn_out, stats = self._feed_forward(self.ffn_norm(x), padding_mask, training)
        outputs = x + self.ffn_dropout_layer(ffn_out, training=training)
        if return_router_stats:
            return outputs, stats
        return outputs

    def _feed_forward(self, normed, padding_mask, training):
        """The FFN (Switch or dense) on `[B, T, d]`; returns (outputs, stats)."""
        if self.num_experts is not None:
            return self.ffn(
                normed,
                padding_mask=padding_mask,
                training=training,
                return_router_stats=True,
            )
        hidden_dim = normed.shape[-1]
        flat = tf.reshape(normed, [1, -1, hidden_dim])
        ffn_out = tf.reshape(self.ffn(flat, training=training), tf.shape(normed))
        ffn_out.set_shape(normed.shape)
        return ffn_out, None

    def call_with_cache(self, inputs, key_cache, value_cache, cache_index):
        """Inference on T new positions per row, with a key/value cache.

        Row b's inputs are the positions `cache_index[b] + t`, t < T. Their
        keys and values are written into the caches at those positions, and
        each attends to every cached position up to its own (causal), so a
        prefill (T = L, `cache_index` 0) equals `call` on the whole window and
        a decoding step (T = 1) equals `call` on the sequence so far. Cache
        slots beyond a row's position may hold anything: they are never
        read. The Switch FFN routes the T tokens of each row as one group:
        with one token per step no capacity can drop it, so decoding routes
        exactly as a dropless full pass does.

        Args:
            inputs: `[B, T, hidden]`, T static.
            key_cache, value_cache: `[B, L, num_heads, head_dim]`, L static.
            cache_index: `<int32>[B]`, each row's first position, with
                `cache_index + T <= L`.

        Returns:
            `(outputs [B, T, hidden], key_cache, value_cache, token_expert)`;
            `token_expert` is `<int32>[B, T]`, each token's expert (-1 when
            dropped), or None for a dense block.
        """
        steps, length = inputs.shape[1], key_cache.shape[1]
        normed = self.attention_norm(inputs)
        query = self.attention.query_dense(normed)  # [B, T, H, D]
        keys = self.attention.key_dense(normed)
        values = self.attention.value_dense(normed)
        slots = tf.range(length)[None, :]  # [1, L]
        if steps == 1:  # a decoding step: one scatter per cache
            rows = tf.range(tf.shape(inputs)[0])
            where = tf.stack([rows, cache_index], axis=1)  # [B, 2]
            key_cache = tf.tensor_scatter_nd_update(key_cache, where, keys[:, 0])
            value_cache = tf.tensor_scatter_nd_update(value_cache, where, values[:, 0])
        else:  # slot l of row b takes input l - cache_index[b], if any
            offset = slots - cache_index[:, None]  # [B, L]
            written = ((offset >= 0) & (offset < steps))[:, :, None, None]
            source = tf.clip_by_value(offset, 0, steps - 1)
            key_cache = tf.where(
                written, tf.gather(keys, source, batch_dims=1), key_cache
            )
            value_cache = tf.where(
                written, tf.gather(values, source, batch_dims=1), value_cache
            )
        query_position = cache_index[:, None] + tf.range(steps)[None, :]  # [B, T]
        visible = slots[:, None, :] <= query_position[:, :, None]  # [B, T, L]
        # Scaled dot-product attention, as MultiHeadAttention computes it
        # (no attention dropout at inference), in few ops: a decoding step
        # is dominated by per-op overhead, not arithmetic.
        scale = tf.cast(1.0 / math.sqrt(query.shape[-1]), query.dtype)
        scores = tf.einsum("bthd,bshd->bhts", query * scale, key_cache)
        scores = tf.where(visible[:, None], scores, scores.dtype.min)
        weights = tf.nn.softmax(scores, axis=-1)  # [B, H, T, L]
        attended = tf.einsum("bhts,bshd->bthd", weights, value_cache)
        x = inputs + self.attention.output_dense(attended)
        ffn_out, stats = self._feed_forward(self.ffn_norm(x), None, False)
        token_expert = None if stats is None else stats["token_expert"]
        return x + ffn_out, key_cache, value_cache, token_expert

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_experts": self.num_experts,
                "causal": self.causal,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": self.activation,
                "expert_dropout": self.expert_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "switch_options": self.switch_options
                and self.switch_options.to_config(),
            }
        )
        return config
