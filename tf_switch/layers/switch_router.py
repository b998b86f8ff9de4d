"""The Switch router: float32 routing decisions, auxiliary losses and metrics."""

import keras
import tensorflow as tf

from tf_switch import routing
from tf_switch.decision import RouterOutput
from tf_switch.initializers import SwitchInitializer
from tf_switch.layers.router_metrics import RouterMetrics
from tf_switch.options import RouterOptions


@keras.saving.register_keras_serializable(package="tf_switch")
class SwitchRouter(keras.layers.Layer):
    """Routes groups of tokens to experts, in float32 whatever the dtype policy.

    Computes router logits h(x) = x W_r and probabilities p(x) = softmax(h(x)),
    then assigns tokens to expert slots (paper §2.1-2.2):

    - `"tokens_choose"` (default): each token picks its `top_k` most probable
      experts (k=1 is Switch); an expert takes at most C of the choices made
      for it, C = ceil(capacity_factor * T / N) clipped to [min_capacity, T].
      The rest are dropped: the layer outputs 0 for them, so the residual
      carries them. Priority is sequence order, or the top-1 probability with
      `batch_prioritized_routing=True` (paper Appendix D).
    - `"experts_choose"`: each expert takes its C most probable tokens (Zhou
      et al. 2022); balanced by construction, so no load-balancing loss.

    The router runs on its own float32 copy of the input (paper §2.4,
    selective precision); in training that copy is scaled by multiplicative
    jitter U(1 - eps, 1 + eps), which the experts never see. The kernel is a
    float32 variable under any mixed policy.

    Losses, added with `add_loss` already weighted, on every call:
    `load_balance_loss_weight * N * sum_i f_i P_i` (paper Eq. 4, f_i counted
    from top-1 choices before dropping, per group and averaged over groups,
    padding excluded) and
    `router_z_loss_weight * mean(logsumexp(h)^2)` (ST-MoE, arXiv 2202.08906).

    Args:
        num_experts: N, at least 2.
        top_k: choices per token for `"tokens_choose"` (default 1). Capacity
            does not scale with k: raise `capacity_factor` k-fold to keep the
            same drop rate.
        routing: `"tokens_choose"` or `"experts_choose"`.
        capacity_factor: in training; default 1.25. None is dropless (C = T).
        eval_capacity_factor: in evaluation and inference; default 2.0.
        min_capacity: smallest C; default 4.
        batch_prioritized_routing: route the most confident tokens first.
        causal: the model is autoregressive; refuses options that let a token's
            routing depend on later tokens (`"experts_choose"`,
            `batch_prioritized_routing`).
        jitter_noise: eps of the multiplicative jitter; default 0.0 (off).
        load_balance_loss_weight: alpha; default 0.01 (paper §2.2).
        router_z_loss_weight: default 0.001 (ST-MoE); independent of alpha.
        per_expert_metrics: log each expert's token fraction (one key per
            expert); turn off with many experts.
        kernel_initializer: default `SwitchInitializer()`.
        seed: seed of the jitter noise.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[G, T, d]` grouped tokens; T must be static.
        padding_mask: optional `<bool>[G, T]`, false for padding tokens, which
            take no slot and count for no loss or metric.
        training: Python bool; selects the capacity factor and jitter.
        layout: `"slots"` (default): the decision in static `[G, N, C]`
            expert slots (a dropless router then gives every expert C = T
            slots); `"sorted"`: the kept choices sorted by expert, no empty
            slot (tokens-choose only; dynamic shapes, not under XLA).

    Returns:
        A `tf_switch.decision.RouterOutput`: `decision` (a `SlotRouting`,
        `ExpertChoiceRouting` or `SortedRouting`, see `tf_switch.decision`),
        `router_logits`, `router_probs` `<float32>[G, T, N]` and `stats`, a
        dict of float32 scalars (`load_balance_loss`, `router_z_loss`
        unweighted, `dropped_fraction`, `router_confidence`) and
        `expert_fraction <float32>[N]`.

    Example:

    >>> router = SwitchRouter(num_experts=4)
    >>> output = router(keras.ops.ones((2, 16, 8)))
    >>> output.decision.slot_token.shape  # eval capacity ceil(2.0 * 16 / 4) = 8
    TensorShape([2, 4, 8])

    References:
        Fedus, Zoph & Shazeer, "Switch Transformers", arXiv 2101.03961.
    """

    def __init__(
        self,
        num_experts,
        top_k=1,
        routing="tokens_choose",
        capacity_factor=1.25,
        eval_capacity_factor=2.0,
        min_capacity=4,
        batch_prioritized_routing=False,
        causal=False,
        jitter_noise=0.0,
        load_balance_loss_weight=0.01,
        router_z_loss_weight=0.001,
        per_expert_metrics=True,
        kernel_initializer=None,
        seed=None,
        **kwargs,
    ):
        # Inputs are cast to float32 in `call`, never down to a bf16 policy.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if not isinstance(num_experts, int) or num_experts < 2:
            raise ValueError(
                "Invalid value received for argument `num_experts`. Expected an "
                f"int >= 2. Received: num_experts={num_experts!r}"
            )
        options = RouterOptions(
            top_k=top_k,
            routing=routing,
            capacity_factor=capacity_factor,
            eval_capacity_factor=eval_capacity_factor,
            min_capacity=min_capacity,
            batch_prioritized_routing=batch_prioritized_routing,
            jitter_noise=jitter_noise,
            load_balance_loss_weight=load_balance_loss_weight,
            router_z_loss_weight=router_z_loss_weight,
            per_expert_metrics=per_expert_metrics,
        )
        if top_k > num_experts:
            raise ValueError(
                "Invalid value received for argument `top_k`. Expected an int in "
                f"[1, num_experts={num_experts}]. Received: top_k={top_k!r}"
            )
        if causal and routing == "experts_choose":
            raise ValueError(
                "Expert-choice routing lets a token's routing depend on later "
                "tokens, which a causal model must not see. Use "
                "routing='tokens_choose' with causal=True."
            )
        if causal and batch_prioritized_routing:
            raise ValueError(
                "Batch-prioritized routing orders tokens by router confidence, "
                "so earlier tokens can be dropped because of later ones, which "
                "leaks the future in a causal model. Use "
                "batch_prioritized_routing=False with causal=True."
            )
        self.options = options
        self.num_experts = num_experts
        self.top_k = top_k
        self.routing = routing
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.batch_prioritized_routing = batch_prioritized_routing
        self.causal = causal
        self.jitter_noise = jitter_noise
        self.load_balance_loss_weight = load_balance_loss_weight
        self.router_z_loss_weight = router_z_loss_weight
        self.per_expert_metrics = per_expert_metrics
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or SwitchInitializer()
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="jitter_seed")
        # Off in serving graphs, which must not write state on each request.
        self.update_metrics = True
        self.routing_metrics = RouterMetrics(
            num_experts, per_expert=per_expert_metrics, name=self.name
        )

    def build(self, input_shape):
        # float32 and not autocast: the router kernel never becomes bfloat16.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.num_experts),
            initializer=self.kernel_initializer,
            dtype="float32",
            autocast=False,
        )

    def is_dropless(self, training):
        """Whether the capacity factor for this mode is None (no drops)."""
        factor = self.capacity_factor if training else self.eval_capacity_factor
        return factor is None

    def expert_capacity(self, tokens_per_group, training):
        """C for groups of `tokens_per_group` tokens, a Python int."""
        factor = self.capacity_factor if training else self.eval_capacity_factor
        return routing.expert_capacity(
            tokens_per_group, self.num_experts, factor, self.min_capacity
        )

    def call(self, inputs, padding_mask=None, training=None, layout="slots"):
        tokens_per_group = inputs.shape[1]
        if tokens_per_group is None:
            raise ValueError(
                "SwitchRouter needs a static number of tokens per group to size "
                f"expert capacity. Received inputs of shape {inputs.shape}."
            )
        # Selective precision (paper §2.4): all routing math in float32.
        router_inputs = tf.cast(inputs, tf.float32)
        if training and self.jitter_noise > 0:
            router_inputs *= keras.random.uniform(
                tf.shape(router_inputs),
                minval=1.0 - self.jitter_noise,
                maxval=1.0 + self.jitter_noise,
                seed=self.seed_generator,
            )
        if padding_mask is None:
            mask = tf.ones(tf.shape(inputs)[:2], dtype=tf.bool)
        else:
            mask = tf.cast(padding_mask, tf.bool)
        # A 2-D matmul: as a broadcast batch matmul, [G, T, d] x [d, N] is
        # slower, most of all its gradient with respect to the kernel.
        router_logits = tf.reshape(
            tf.matmul(tf.reshape(router_inputs, [-1, inputs.shape[-1]]), self.kernel),
            [-1, tokens_per_group, self.num_experts],
        )  # [G, T, N]
        router_probs = tf.nn.softmax(router_logits, axis=-1)  # [G, T, N]

        capacity = self.expert_capacity(tokens_per_group, training)
        if layout not in ("slots", "sorted"):
            raise ValueError(
                "Invalid value received for argument `layout`. Expected "
                f"'slots' or 'sorted'. Received: layout={layout!r}"
            )
        if layout == "sorted":
            if self.routing != "tokens_choose":
                raise ValueError(
                    "The sorted layout is for tokens-choose routing; expert-choice "
                    "routing fills C static slots per expert. Use layout='slots'."
                )
            decision = routing.sorted_routing(
                router_probs,
                self.top_k,
                None if self.is_dropless(training) else capacity,
                mask,
                self.batch_prioritized_routing,
            )
        elif self.routing == "tokens_choose":
            decision = routing.tokens_choose_routing(
                router_probs,
                self.top_k,
                capacity,
                mask,
                self.batch_prioritized_routing,
            )
        else:
            decision = routing.experts_choose_routing(router_probs, capacity, mask)

        top1_expert = tf.argmax(router_probs, axis=-1, output_type=tf.int32)  # [G, T]
        stats = {
            "load_balance_loss": routing.load_balancing_loss(
                router_probs, top1_expert, mask
            ),
            "router_z_loss": routing.router_z_loss(router_logits, mask),
            "dropped_fraction": 1.0
            - routing.masked_mean(tf.cast(decision.kept, tf.float32), mask[..., None]),
            "router_confidence": routing.masked_mean(
                tf.reduce_max(router_probs, axis=-1), mask
            ),
            "expert_fraction": routing.expert_fraction(
                top1_expert, self.num_experts, mask
            ),
        }
        if self.routing == "tokens_choose" and self.load_balance_loss_weight > 0:
            self.add_loss(self.load_balance_loss_weight * stats["load_balance_loss"])
        if self.router_z_loss_weight > 0:
            self.add_loss(self.router_z_loss_weight * stats["router_z_loss"])
        if self.update_metrics:
            self.routing_metrics.update_state(
                stats, tf.reduce_sum(tf.cast(mask, tf.float32))
            )
        return RouterOutput(
            decision=decision,
            router_logits=router_logits,
            router_probs=router_probs,
            stats=stats,
        )

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "num_experts": self.num_experts,
                **self.options.to_config(),
                "causal": self.causal,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "seed": self.seed,
            }
        )
        return config
