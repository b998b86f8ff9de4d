"""N feed-forward experts with stacked kernels."""

import keras
import tensorflow as tf

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
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[N, tokens_per_expert, hidden_dim]`, expert-major; or, with
            `expert_sizes`, `[M, hidden_dim]` rows sorted by expert.
        expert_sizes: optional `<int32>[N]`, rows of each expert in `inputs`
            (summing to M). Then each expert runs as its own 2-D matmuls on
            exactly its rows (no padded slots), which on CPUs is also faster
            than one batched matmul (`benchmarks/RESULTS.md`).
        training: Python bool; enables dropout.

    Returns:
        The shape of `inputs`.

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
        self.num_experts = num_experts
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
        self.wi = [
            self.add_expert_weight(
                f"wi_{i}" if num_in > 1 else "wi",
                (self.num_experts, hidden_dim, self.intermediate_dim),
                self.kernel_initializer,
            )
            for i in range(num_in)
        ]
        self.wo = self.add_expert_weight(
            "wo",
            (self.num_experts, self.intermediate_dim, hidden_dim),
            self.kernel_initializer,
        )
        self.bi = self.bo = None
        if self.use_bias:
            self.bi = self.add_expert_weight(
                "bi", (self.num_experts, 1, self.intermediate_dim), "zeros"
            )
            self.bo = self.add_expert_weight(
                "bo", (self.num_experts, 1, hidden_dim), "zeros"
            )

    def add_expert_weight(self, name, shape, initializer):
        """Creates a `[N, ...]` weight, one slice per expert."""
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def call(self, inputs, expert_sizes=None, training=None):
        if expert_sizes is not None:
            return self.apply_experts_sorted(inputs, expert_sizes, training)
        return self.apply_experts(inputs, self.wi, self.wo, self.bi, self.bo, training)

    def apply_experts_sorted(self, inputs, expert_sizes, training):
        """`[M, d]` rows sorted by expert through each expert's own 2-D matmuls.

        Expert n computes rows `sum(expert_sizes[:n]):sum(expert_sizes[:n+1])`
        only: the FLOPs are those of the routed tokens, whatever their split.
        """
        segments = tf.split(inputs, expert_sizes, num=self.num_experts)
        # Autocast: inside `call`, a variable reads in the compute dtype.
        wi = [tf.unstack(keras.ops.convert_to_tensor(w)) for w in self.wi]
        wo = tf.unstack(keras.ops.convert_to_tensor(self.wo))
        bi = bo = [None] * self.num_experts
        if self.use_bias:
            bi = tf.unstack(keras.ops.convert_to_tensor(self.bi))
            bo = tf.unstack(keras.ops.convert_to_tensor(self.bo))
        outputs = [
            self._expert(segments[n], [w[n] for w in wi], wo[n], bi[n], bo[n], training)
            for n in range(self.num_experts)
        ]
        return tf.concat(outputs, axis=0)  # [M, hidden]

    def _expert(self, inputs, wi, wo, bi, bo, training):
        """One expert on its `[rows, d]` tokens (2-D matmuls)."""
        hidden = tf.matmul(inputs, wi[0])  # [rows, intermediate]
        if bi is not None:
            hidden = hidden + bi
        if self.activation == "relu":
            hidden = keras.activations.relu(hidden)
        else:
            hidden = keras.activations.gelu(hidden, approximate=True)
        if self.activation == "gated-gelu":
            hidden = hidden * tf.matmul(inputs, wi[1])
        hidden = self.dropout(hidden, training=training)
        outputs = tf.matmul(hidden, wo)
        if bo is not None:
            outputs = outputs + bo
        return outputs

    def apply_experts(self, inputs, wi, wo, bi, bo, training):
        """`[E, M, d]` tokens through E experts with these weights (E <= N)."""
        hidden = keras.ops.matmul(inputs, wi[0])  # [E, M, intermediate]
        if bi is not None:
            hidden = hidden + bi
        if self.activation == "relu":
            hidden = keras.activations.relu(hidden)
        else:
            hidden = keras.activations.gelu(hidden, approximate=True)
        if self.activation == "gated-gelu":
            hidden = hidden * keras.ops.matmul(inputs, wi[1])
        hidden = self.dropout(hidden, training=training)
        outputs = keras.ops.matmul(hidden, wo)
        if bo is not None:
            outputs = outputs + bo
        return outputs  # [E, M, hidden]

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
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Configs saved before expert parallelism moved to
        # `tf_switch.distribute.expert_parallel.ExpertParallelFFN` carry the
        # flag; the plain layer loads them when it is off.
        config = dict(config)
        if config.pop("expert_parallel", False):
            raise ValueError(
                "This ExpertFFN was saved with expert_parallel=True; load it as "
                "tf_switch.distribute.expert_parallel.ExpertParallelFFN."
            )
        return super().from_config(config)
