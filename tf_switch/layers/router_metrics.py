"""Routing statistics as a Keras 3 metric, so they reach `model.fit` logs."""

import keras

# The scalar statistics a router reports each call, in storage order.
SCALAR_STATS = (
    "load_balance_loss",
    "router_z_loss",
    "dropped_fraction",
    "router_confidence",
)


@keras.saving.register_keras_serializable(package="tf_switch")
class RouterMetrics(keras.metrics.Metric):
    """Token-weighted running means of one router's statistics.

    Keras 3 has no `Layer.add_metric`; a metric owned by a layer and updated in
    its `call` is collected by `Model.metrics`, and a dict result is flattened
    into the logs that `model.fit` prints and `History` keeps. Keys are
    `"{name}/{stat}"` for the `SCALAR_STATS`, `"{name}/max_load"` (the busiest
    expert's share of tokens times N: 1.0 is perfect balance, and with dropless
    routing it is how much longer that expert computes than an even split)
    and, with `per_expert=True`, `"{name}/expert_{i}_fraction"`.

    The losses are unweighted (a balanced router scores 1.0 on
    `load_balance_loss`); the weighted ones are what reaches the model's loss.

    Args:
        num_experts: N.
        per_expert: report each expert's token fraction as its own key.
        name: prefix of the keys; a router uses its own name.
    """

    def __init__(self, num_experts, per_expert=True, name="router", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_experts = num_experts
        self.per_expert = per_expert
        self.tokens = self.add_variable(shape=(), initializer="zeros", name="tokens")
        self.weighted_sums = self.add_variable(
            shape=(len(SCALAR_STATS) + num_experts,),
            initializer="zeros",
            name="weighted_sums",
        )

    def update_state(self, stats, num_tokens):
        """Adds one call's statistics.

        Args:
            stats: dict with the `SCALAR_STATS` scalars and `expert_fraction`,
                `<float32>[N]`.
            num_tokens: number of valid (non-padding) tokens in the call.
        """
        values = keras.ops.concatenate(
            [
                keras.ops.stack([stats[key] for key in SCALAR_STATS]),
                stats["expert_fraction"],
            ]
        )
        num_tokens = keras.ops.cast(num_tokens, self.dtype)
        self.tokens.assign_add(num_tokens)
        self.weighted_sums.assign_add(keras.ops.cast(values, self.dtype) * num_tokens)

    def result(self):
        means = keras.ops.divide_no_nan(self.weighted_sums, self.tokens)
        results = {f"{self.name}/{key}": means[i] for i, key in enumerate(SCALAR_STATS)}
        offset = len(SCALAR_STATS)
        results[f"{self.name}/max_load"] = self.num_experts * keras.ops.max(
            means[offset:]
        )
        if self.per_expert:
            for expert in range(self.num_experts):
                results[f"{self.name}/expert_{expert}_fraction"] = means[
                    offset + expert
                ]
        return results

    def get_config(self):
        return {
            "num_experts": self.num_experts,
            "per_expert": self.per_expert,
            "name": self.name,
            "dtype": self.dtype,
        }
