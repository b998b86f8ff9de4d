"""N feed-forward experts with stacked kernels."""

import keras
import tensorflow as tf

from tf_switch.distribute import expert_parallel as ep
from tf_switch.distribute import expert_shards
from tf_switch.initializers import SwitchInitializer

ACTIVATIONS = ("relu", "gelu", "gated-gelu")


@keras.saving.register_keras_serializable(package="tf_switch")
class ExpertFFN(keras.layers.Layer):
    """N independent feed-forward networks applied as batched matmuls.

    Expert n maps its tokens x to `act(x @ wi[n]) @ wo[n]` (T5's FFN, no biases
    by default); `"gated-gelu"` is T5 v1.1's `(gelu(x @ wi_0[n]) * (x @ wi_1[n]))
    @ wo[n]`. Kernels are stacked, `wi: [N, hidden_dim, intermediate_dim]` and
    `wo: [N, intermediate_dim, hidden_dim]`, so all experts run as one batched
    matmul per weight. With `num_experts=1` this is the dense FFN that a Switch
    layer is compared against.

    Args:
        num_experts: N.
        intermediate_dim: width of each expert's hidden layer.
        activation: `"relu"` (default), `"gelu"` or `"gated-gelu"`; GELU is
            the tanh approximation, as in T5 and Flaxformer.
        expert_dropout: dropout rate on each expert's hidden activations; the
            paper fine-tunes with 0.4 here and 0.1 elsewhere (§3.3).
        use_bias: add per-expert biases (Model Garden style); default False.
        kernel_initializer: default `SwitchInitializer()`, truncated normal
            with std sqrt(0.1 / fan_in) per expert (paper §2.4).
        expert_parallel: shard the experts over the replicas of the
            `tf.distribute` strategy the layer is built under (see
            `tf_switch.distribute.expert_parallel`): with D replicas each holds
            N/D experts' weights and optimizer slots, and tokens travel to
            their expert's replica by all-to-all. N must be divisible by D.
            Outside a strategy, or with one replica, the layer is the plain
            one (the option is kept in the config, so a saved model reloads
            onto more devices). Default False.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[N, tokens_per_expert, hidden_dim]`, expert-major.
        training: Python bool; enables dropout.

    Returns:
        `[N, tokens_per_expert, hidden_dim]`.

    Example:

    >>> experts = ExpertFFN(num_experts=4, intermediate_dim=32)
    >>> experts(keras.ops.ones((4, 10, 16))).shape
    TensorShape([4, 10, 16])

    References:
        Fedus et al., arXiv 2101.03961, §2.2 and §2.4.
    """

    def __init__(
        self,
        num_experts,
        intermediate_dim,
        activation="relu",
        expert_dropout=0.0,
        use_bias=False,
        kernel_initializer=None,
        expert_parallel=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(
                "Invalid value received for argument `num_experts`. Expected a "
                f"positive int. Received: num_experts={num_experts}"
            )
        if not isinstance(intermediate_dim, int) or intermediate_dim < 1:
            raise ValueError(
                "Invalid value received for argument `intermediate_dim`. "
                f"Expected a positive int. Received: intermediate_dim="
                f"{intermediate_dim}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                "Invalid value received for argument `activation`. Expected one "
                f"of {ACTIVATIONS}. Received: activation={activation!r}"
            )
        if not 0.0 <= expert_dropout < 1.0:
            raise ValueError(
                "Invalid value received for argument `expert_dropout`. Expected "
                f"a float in [0, 1). Received: expert_dropout={expert_dropout}"
            )
        if not isinstance(expert_parallel, bool):
            raise ValueError(
                "Invalid value received for argument `expert_parallel`. Expected "
                f"a bool. Received: expert_parallel={expert_parallel!r}"
            )
        self.num_experts = num_experts
        self.expert_parallel = expert_parallel
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.expert_dropout = expert_dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or SwitchInitializer()
        )
        self.dropout = keras.layers.Dropout(
            expert_dropout, dtype=self.dtype_policy, name="expert_dropout"
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        num_in = 2 if self.activation == "gated-gelu" else 1
        num_shards = 1
        if self.expert_parallel:
            num_shards = ep.num_expert_shards(self.num_experts)
        # The all-to-all between replicas; None when the experts are whole.
        self.exchange = None
        if num_shards > 1:
            self.exchange = ep.ExpertExchange(
                self.num_experts, tf.distribute.get_strategy()
            )

        def expert_weight(name, shape, initializer):
            if num_shards > 1:
                return expert_shards.add_expert_weight(
                    self, name, shape, initializer, num_shards
                )
            return self.add_weight(name=name, shape=shape, initializer=initializer)

        self.wi = [
            expert_weight(
                f"wi_{i}" if num_in > 1 else "wi",
                (self.num_experts, hidden_dim, self.intermediate_dim),
                self.kernel_initializer,
            )
            for i in range(num_in)
        ]
        self.wo = expert_weight(
            "wo",
            (self.num_experts, self.intermediate_dim, hidden_dim),
            self.kernel_initializer,
        )
        if self.use_bias:
            self.bi = expert_weight(
                "bi", (self.num_experts, 1, self.intermediate_dim), "zeros"
            )
            self.bo = expert_weight("bo", (self.num_experts, 1, hidden_dim), "zeros")

    def _weight(self, variable, local):
        """`variable` as the call uses it.

        Inside the strategy's replica context a sharded variable reads as this
        replica's experts; elsewhere its shards are concatenated.
        """
        if self.exchange is None or local:
            return variable
        full = expert_shards.full_expert_weight(variable)
        return keras.ops.cast(full, self.compute_dtype)

    def call(self, inputs, training=None):
        local = self.exchange is not None and self.exchange.in_replica_context()
        if local:
            inputs = self.exchange.to_experts(inputs)  # [N/D, D*M, d]
        hidden = keras.ops.matmul(inputs, self._weight(self.wi[0], local))
        # hidden: [N, M, intermediate], or [N/D, D*M, intermediate]
        if self.use_bias:
            hidden = hidden + self._weight(self.bi, local)
        if self.activation == "relu":
            hidden = keras.activations.relu(hidden)
        else:
            hidden = keras.activations.gelu(hidden, approximate=True)
        if self.activation == "gated-gelu":
            hidden = hidden * keras.ops.matmul(inputs, self._weight(self.wi[1], local))
        hidden = self.dropout(hidden, training=training)
        outputs = keras.ops.matmul(hidden, self._weight(self.wo, local))
        if self.use_bias:
            outputs = outputs + self._weight(self.bo, local)
        if local:
            outputs = self.exchange.from_experts(outputs)
        return outputs  # [N, M, hidden]

    def _variables_by_key(self):
        variables = {}
        super().save_own_variables(variables)  # Keras stores the variables
        return variables

    def save_own_variables(self, store):
        # Full [N, ...] experts, whatever the sharding: an expert-parallel
        # and a replicated layer load each other's weights.
        expert_shards.save_full_values(
            super().save_own_variables, self._variables_by_key(), store
        )

    def load_own_variables(self, store):
        expert_shards.load_full_values(
            super().load_own_variables, self._variables_by_key(), store
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "intermediate_dim": self.intermediate_dim,
                "activation": self.activation,
                "expert_dropout": self.expert_dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "expert_parallel": self.expert_parallel,
            }
        )
        return config
