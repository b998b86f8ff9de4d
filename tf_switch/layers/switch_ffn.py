"""The Switch feed-forward layer: router, dispatch, experts, combine."""

import keras
import tensorflow as tf

from tf_switch import dispatch as dispatch_lib
from tf_switch.layers.expert_ffn import ExpertFFN
from tf_switch.layers.shared_expert import SharedExpert
from tf_switch.layers.switch_router import SwitchRouter
from tf_switch.options import SwitchOptions
from tf_switch.xla import in_xla_context


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchFFN(keras.layers.Layer):
    """A sparse Switch feed-forward layer, a drop-in for a transformer's FFN.

    Tokens are split into groups of static size; in each group a
    `SwitchRouter` assigns tokens to expert slots, the tokens are dispatched
    to N `ExpertFFN` experts, and each token's output is its experts' outputs
    scaled by their router probabilities: y = p_i(x) E_i(x) for top-1 (paper
    Eq. 2). A token that no expert took (over capacity, or padding) outputs
    exactly 0, so the residual connection carries it (§2.2).

    Args:
        num_experts: N.
        intermediate_dim: each expert's hidden width.
        activation: `"relu"`, `"gelu"` or `"gated-gelu"`.
        expert_dropout: dropout inside the experts.
        use_bias: per-expert biases; default False.
        kernel_initializer: for router and experts; default
            `SwitchInitializer()` (std sqrt(0.1 / fan_in)).
        causal: the model is autoregressive; refuses routing options that let
            a token's routing depend on later tokens.
        seed: seed of the router's jitter noise.
        options: a `tf_switch.options.SwitchOptions` (or its config dict):
            routing (`top_k`, `routing`, `capacity_factor`,
            `eval_capacity_factor`, `min_capacity`,
            `batch_prioritized_routing`, `jitter_noise`, loss weights,
            `per_expert_metrics`), `group_size`, `dispatch` and
            `expert_parallel`. Each of its fields may also be passed as a
            keyword argument, which overrides `options`:
            - `group_size`: None (default): each sequence of a
              `[batch, length, hidden]` input is its own group, so a
              sequence's output never depends on the rest of its batch. An
              int: all tokens of the call are flattened in order and cut into
              groups of that size; a last incomplete group is padded with
              masked tokens that take no slot and count for no loss. Capacity
              is per group, so larger groups drop fewer tokens.
            - `dispatch`: `"gather"` (default; static `[N, C]` slots moved
              by gathers), `"einsum"` (one-hot matmuls, TPU-friendly; cost
              grows with `group_size`) or `"sorted"` (tokens sorted by expert,
              each expert on exactly its own tokens: no padded slot; dynamic
              shapes, so not under XLA). Same outputs and gradients. Whenever
              the capacity factor of a mode is None (dropless), that mode
              dispatches `"sorted"` whatever this says, so dropless costs
              the routed tokens, not T slots per expert; under XLA it is
              refused with a message.
            - `expert_parallel`: shard the experts over the replicas of the
              `tf.distribute` strategy the layer is built under, N/D per
              replica, with all-to-all token exchange; the router stays
              data-parallel (`tf_switch.distribute.expert_parallel`).
            - `shared_expert_dim`, `shared_expert_gate`: add a `SharedExpert`
              (a dense FFN on every token, optionally gated) to the routed
              output; it stays data-parallel.
            - `normalize_gates`: each token's gates sum to 1 over its kept
              choices (with `top_k >= 2`; what upcycling uses).
        **kwargs: `SwitchOptions` fields, then `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[..., hidden_dim]`; `[batch, length, hidden_dim]` with a
            static length when `group_size` is None.
        padding_mask: optional bool, `inputs.shape[:-1]`; false marks padding.
        training: Python bool.
        return_router_stats: also return the router's statistics (see
            `SwitchRouter`), for custom training loops, plus each token's
            routing: `token_expert` (`<int32>`, `inputs.shape[:-1]`, its top
            expert, -1 when dropped or padding), `token_probability`
            (`<float32>`, that expert's router probability) and
            `token_router_probs` (`<float32>[..., N]`, all of them).

    Returns:
        Same shape as `inputs`; with `return_router_stats=True`, a tuple
        `(outputs, stats)`.

    Example:

    >>> ffn = SwitchFFN(num_experts=4, intermediate_dim=64, capacity_factor=1.0)
    >>> x = keras.random.normal((2, 16, 32))
    >>> y, stats = ffn(x, training=True, return_router_stats=True)
    >>> y.shape, sorted(stats)[:2]
    (TensorShape([2, 16, 32]), ['dropped_fraction', 'expert_fraction'])

    References:
        Fedus, Zoph & Shazeer, "Switch Transformers", arXiv 2101.03961, §2.
    """

    def __init__(
        self,
        num_experts,
        intermediate_dim,
        activation="relu",
        expert_dropout=0.0,
        use_bias=False,
        kernel_initializer=None,
        causal=False,
        seed=None,
        options=None,
        **kwargs,
    ):
        given = {k: kwargs.pop(k) for k in SwitchOptions.field_names() if k in kwargs}
        super().__init__(**kwargs)
        self.options = SwitchOptions.from_config(options).replace(**given)
        self.group_size = self.options.group_size
        self.dispatch = self.options.dispatch
        self.supports_masking = True
        # Dynamic shapes (sorted dispatch, dropless routing) do not compile
        # with XLA: Keras' jit_compile="auto" then stays off for the model.
        self.supports_jit = not self.uses_dynamic_shapes()
        router_options = self.options.router_options().to_config()
        self.router = SwitchRouter(
            num_experts,
            kernel_initializer=kernel_initializer,
            causal=causal,
            seed=seed,
            dtype=self.dtype_policy,
            name=f"{self.name}_router",
            **router_options,
        )
        expert_class = ExpertFFN
        if self.options.expert_parallel:
            # Explicitly switched on: only then is the distribution code loaded.
            from tf_switch.distribute.expert_parallel import ExpertParallelFFN

            expert_class = ExpertParallelFFN
        self.experts = expert_class(
            num_experts,
            intermediate_dim,
            activation=activation,
            expert_dropout=expert_dropout,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="experts",
        )
        self.shared_expert = None
        if self.options.shared_expert_dim is not None:
            # A plain (replicated) layer even with expert_parallel=True.
            self.shared_expert = SharedExpert(
                self.options.shared_expert_dim,
                gated=self.options.shared_expert_gate,
                activation=activation,
                expert_dropout=expert_dropout,
                use_bias=use_bias,
                kernel_initializer=kernel_initializer,
                dtype=self.dtype_policy,
                name="shared_expert",
            )

    def uses_dynamic_shapes(self):
        """Whether some mode of this layer dispatches sorted (not for XLA)."""
        options = self.options
        return options.dispatch == "sorted" or None in (
            options.capacity_factor,
            options.eval_capacity_factor,
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        tokens_per_group = self.group_size or input_shape[-2]
        self.router.build((None, tokens_per_group, hidden_dim))
        self.experts.build((self.router.num_experts, None, hidden_dim))
        if self.shared_expert is not None:
            self.shared_expert.build(input_shape)

    def _normalized(self, outputs, expert_outputs, decision, tokens_per_group, method):
        """`outputs` [G, T, d] divided by each token's sum of kept gates.

        That sum is the combine of all-ones expert outputs, so it holds for
        any dispatch method and routing; a token with no kept choice stays 0.
        """
        ones = tf.ones_like(expert_outputs[..., :1])  # [N, G*C, 1] or [M, 1]
        gate_sum = dispatch_lib.combine(
            ones, decision, tokens_per_group, method
        )  # [G, T, 1]
        return tf.math.divide_no_nan(outputs, gate_sum)

    def _fills_groups(self, inputs):
        """Whether the tokens statically fill whole groups: no padding needed.

        Padding and cutting it off again cost a copy of the tokens each way
        (the slice's gradient zero-fills and copies), so skip them when the
        static shape shows they are no-ops.
        """
        token_shape = inputs.shape[:-1]
        return (
            token_shape.is_fully_defined()
            and token_shape.num_elements() % self.group_size == 0
        )

    def _to_groups(self, inputs, padding_mask):
        """Cuts `[..., d]` tokens into `[G, T, d]` groups and a `[G, T]` mask."""
        hidden_dim = inputs.shape[-1]
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(inputs)[:-1], dtype=tf.bool)
        padding_mask = tf.cast(padding_mask, tf.bool)
        if self.group_size is None:
            if inputs.shape.rank != 3 or inputs.shape[1] is None:
                raise ValueError(
                    "With group_size=None each sequence is a routing group, so "
                    "inputs must be [batch, length, hidden] with a static "
                    f"length. Received inputs of shape {inputs.shape}. Pass "
                    "group_size=... to route flattened tokens in fixed groups."
                )
            return inputs, padding_mask
        tokens = tf.reshape(inputs, [-1, hidden_dim])
        mask = tf.reshape(padding_mask, [-1])
        if not self._fills_groups(inputs):
            num_tokens = tf.shape(tokens)[0]
            num_padding = -num_tokens % self.group_size
            tokens = tf.pad(tokens, [[0, num_padding], [0, 0]])
            mask = tf.pad(mask, [[0, num_padding]], constant_values=False)
        return (
            tf.reshape(tokens, [-1, self.group_size, hidden_dim]),
            tf.reshape(mask, [-1, self.group_size]),
        )

    def _from_groups(self, grouped, inputs):
        """`[G, T, ...]` back to the token layout of `inputs` (`[..., d]`)."""
        if self.group_size is None:
            return grouped
        trailing = grouped.shape[2:]
        tokens = tf.reshape(grouped, [-1, *trailing])
        if not self._fills_groups(inputs):  # cut the padding off again
            tokens = tokens[: tf.reduce_prod(tf.shape(inputs)[:-1])]
        shape = tf.concat(
            [tf.shape(inputs)[:-1], tf.constant(trailing.as_list(), tf.int32)], 0
        )
        ungrouped = tf.reshape(tokens, shape)
        ungrouped.set_shape(inputs.shape[:-1].concatenate(trailing))
        return ungrouped

    def call(self, inputs, padding_mask=None, training=None, return_router_stats=False):
        if (
            padding_mask is not None
            and padding_mask.shape.rank != inputs.shape.rank - 1
        ):
            raise ValueError(
                "`padding_mask` must have the shape of `inputs` without the "
                f"last axis. Received inputs {inputs.shape}, padding_mask "
                f"{padding_mask.shape}."
            )
        method = self.dispatch_method(training)
        if method == "sorted":
            self._refuse_under_xla(training)
        groups, group_mask = self._to_groups(inputs, padding_mask)
        tokens_per_group = groups.shape[1]
        routed = self.router(
            groups,
            padding_mask=group_mask,
            training=training,
            layout="sorted" if method == "sorted" else "slots",
        )
        decision = routed.decision
        expert_inputs = dispatch_lib.dispatch(groups, decision, method)
        if method == "sorted":
            expert_outputs = self.experts(
                expert_inputs, expert_sizes=decision.expert_sizes, training=training
            )  # [M, d]
        else:
            expert_outputs = self.experts(expert_inputs, training=training)
        outputs = dispatch_lib.combine(
            expert_outputs, decision, tokens_per_group, method
        )  # [G, T, d]
        if self.options.normalize_gates:
            outputs = self._normalized(
                outputs, expert_outputs, decision, tokens_per_group, method
            )
        outputs = self._from_groups(outputs, inputs)
        if self.shared_expert is not None:
            outputs += self.shared_expert(
                inputs, padding_mask=padding_mask, training=training
            )
        if return_router_stats:
            probs = routed.router_probs  # [G, T, N]
            first_kept = decision.kept[..., 0]  # [G, T]
            top_expert = tf.argmax(probs, axis=-1, output_type=tf.int32)
            token_expert = tf.where(first_kept, top_expert, -1)
            token_probability = tf.reduce_max(probs, axis=-1)
            return outputs, {
                **routed.stats,
                "token_expert": self._from_groups(token_expert, inputs),
                "token_probability": self._from_groups(token_probability, inputs),
                "token_router_probs": self._from_groups(probs, inputs),
            }
        return outputs

    def dispatch_method(self, training):
        """The dispatch of a call: `dispatch`, but always `"sorted"` when the
        capacity factor of this mode is None, so that dropless routing costs
        the routed tokens, never T slots per expert."""
        if self.router.is_dropless(training):
            return "sorted"
        return self.dispatch

    def _refuse_under_xla(self, training):
        if not in_xla_context():
            return
        if self.router.is_dropless(training):
            factor = "capacity_factor" if training else "eval_capacity_factor"
            raise ValueError(
                f"{factor}=None (dropless routing) gives each expert as many "
                "tokens as the router sends it, a shape known only at run "
                "time, which XLA (jit_compile=True, TPUs) cannot compile; the "
                "static alternative, T slots for every expert, would cost N "
                f"times the expert FLOPs. Under XLA set {factor} (e.g. 1.25 "
                "in training, 2.0 in evaluation) with dispatch='einsum' (TPU) "
                "or 'gather'; or run without jit_compile to keep dropless."
            )
        raise ValueError(
            "dispatch='sorted' computes a dynamic number of rows per expert, "
            "which XLA (jit_compile=True, TPUs) cannot compile. Under XLA use "
            "dispatch='einsum' (TPU) or 'gather'; or run without jit_compile."
        )

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        router_config = self.router.get_config()
        config.update(
            {
                "num_experts": self.router.num_experts,
                "intermediate_dim": self.experts.intermediate_dim,
                "activation": self.experts.activation,
                "expert_dropout": self.experts.expert_dropout,
                "use_bias": self.experts.use_bias,
                "kernel_initializer": router_config["kernel_initializer"],
                "causal": self.router.causal,
                "seed": self.router.seed,
                **self.options.to_config(),
            }
        )
        return config
