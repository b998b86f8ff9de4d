"""The shared expert: a dense FFN that every token passes through."""

import keras
import tensorflow as tf

from tf_switch.initializers import SwitchInitializer
from tf_switch.layers.expert_ffn import ExpertFFN


@keras.saving.register_keras_serializable(package="tf_switch")
class SharedExpert(keras.layers.Layer):
    """A dense FFN applied to every token, optionally behind a learned gate.

    `SwitchFFN` adds this layer's output to the routed experts' output
    (DeepSpeed-MoE's residual MoE, Rajbhandari et al. 2022; Qwen-MoE's shared
    expert): `y = sum_k p_k E_k(x) + g(x) S(x)`, where `S` is a one-expert
    `ExpertFFN` (so it has the experts' activation, dropout and
    initialization) and `g(x) = sigmoid(x w_g)` with `shared_expert_gate`,
    else 1. Its weights are ordinary (replicated) weights, so the shared
    expert stays data-parallel when the routed experts are sharded.

    Args:
        intermediate_dim: hidden width of the shared FFN.
        gated: learn the per-token sigmoid gate `g(x)` (Qwen-MoE).
        activation: `"relu"`, `"gelu"` or `"gated-gelu"`.
        expert_dropout: dropout on the hidden activations.
        use_bias: biases in the FFN.
        kernel_initializer: default `SwitchInitializer()`, also for the gate.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[..., hidden_dim]` tokens.
        padding_mask: optional bool, `inputs.shape[:-1]`; padding outputs 0,
            as it does from the routed experts.
        training: Python bool.

    Returns:
        Same shape as `inputs`.

    Example:

    >>> shared = SharedExpert(intermediate_dim=32, gated=True)
    >>> shared(keras.ops.ones((2, 5, 16))).shape
    TensorShape([2, 5, 16])

    References:
        Rajbhandari et al., "DeepSpeed-MoE", arXiv 2201.05596, §4.1;
        Qwen team, "Qwen1.5-MoE" (2024), shared expert with a sigmoid gate.
    """

    def __init__(
        self,
        intermediate_dim,
        gated=False,
        activation="relu",
        expert_dropout=0.0,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.gated = gated
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or SwitchInitializer()
        )
        self.ffn = ExpertFFN(
            1,
            intermediate_dim,
            activation=activation,
            expert_dropout=expert_dropout,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="ffn",
        )
        self.supports_masking = True

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        self.ffn.build((1, None, hidden_dim))
        self.gate_kernel = None
        if self.gated:
            self.gate_kernel = self.add_weight(
                name="gate_kernel",
                shape=(hidden_dim, 1),
                initializer=self.kernel_initializer,
            )

    def call(self, inputs, padding_mask=None, training=None):
        hidden_dim = inputs.shape[-1]
        tokens = tf.reshape(inputs, [1, -1, hidden_dim])  # one "expert" of all
        outputs = tf.reshape(self.ffn(tokens, training=training), tf.shape(inputs))
        if self.gated:
            gate = tf.sigmoid(
                tf.matmul(tf.reshape(inputs, [-1, hidden_dim]), self.gate_kernel)
            )
            outputs *= tf.reshape(gate, tf.concat([tf.shape(inputs)[:-1], [1]], 0))
        if padding_mask is not None:
            outputs *= tf.cast(padding_mask, outputs.dtype)[..., None]
        outputs.set_shape(inputs.shape)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.ffn.intermediate_dim,
                "gated": self.gated,
                "activation": self.ffn.activation,
                "expert_dropout": self.ffn.expert_dropout,
                "use_bias": self.ffn.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
