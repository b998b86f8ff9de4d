"""TF Model Garden's `MoeLayer` set up as a Switch (top-1) layer, for comparison.

Model Garden (`official.nlp.modeling.layers.moe`, tf_keras based) ships only an
expert-choice router, `ExpertsChooseMaskedRouter`. `TokensChooseTop1MaskedRouter`
below is the Switch algorithm as Flaxformer's `TokensChooseMaskedRouter` does it
with `num_selected_experts=1` and no batch prioritization: each token picks its
most probable expert, takes the next free position in that expert's buffer in
sequence order (a cumsum), and is dropped if the position is past capacity.
The load-balancing loss (Switch Eq. 4) is added with `add_loss`.

Differences from `tf_switch.SwitchFFN` that remain, all Model Garden's own:
its experts have biases, its capacity is `round(c * T / N)` (ours
`ceil`), and with `export_metrics=False` it records no routing metrics.
"""

import tensorflow as tf
import tf_keras
from official.nlp.modeling.layers import moe


def load_balancing_loss(router_probs, expert_mask):
    """N * sum_i f_i * P_i per group, averaged over groups (Switch Eq. 4).

    Args:
        router_probs: `<float32>[G, T, N]`.
        expert_mask: `<float32>[G, T, N]`, one-hot top-1 choices before
            capacity drops any.

    Returns:
        `<float32>[]`.
    """
    num_experts = router_probs.shape[-1]
    token_fraction = tf.reduce_mean(expert_mask, axis=1)  # [G, N]
    mean_prob = tf.reduce_mean(router_probs, axis=1)  # [G, N]
    return num_experts**2 * tf.reduce_mean(token_fraction * mean_prob)


class TokensChooseTop1MaskedRouter(moe.MaskedRouter):
    """Switch top-1 tokens-choose routing as a Model Garden `MaskedRouter`.

    Args:
        num_experts: N.
        load_balance_loss_weight: alpha of the load-balancing loss.
        **kwargs: `moe.Router` arguments (`router_z_loss_weight`,
            `export_metrics`, ...).
    """

    def __init__(self, num_experts, load_balance_loss_weight=0.01, **kwargs):
        super().__init__(num_experts, **kwargs)
        self.load_balance_loss_weight = load_balance_loss_weight

    def _compute_routing_instructions(self, router_probs, expert_capacity):
        num_experts = router_probs.shape[-1]
        expert_index = tf.argmax(router_probs, axis=-1, output_type=tf.int32)
        expert_mask = tf.one_hot(expert_index, num_experts)  # [G, T, N]
        self.add_loss(
            self.load_balance_loss_weight
            * load_balancing_loss(router_probs, expert_mask)
        )
        # Position of each token in its expert's buffer, in sequence order.
        position = tf.reduce_sum(
            (tf.cumsum(expert_mask, axis=1) - 1.0) * expert_mask, axis=-1
        )  # [G, T]
        # A position >= capacity one-hot encodes to all zeros: token dropped.
        slot = tf.one_hot(tf.cast(position, tf.int32), expert_capacity)  # [G, T, C]
        dispatch_mask = expert_mask[..., None] * slot[:, :, None, :]  # [G, T, N, C]
        gate = tf.reduce_max(router_probs, axis=-1)  # [G, T]
        combine_array = gate[:, :, None, None] * dispatch_mask  # [G, T, N, C]
        return moe.RouterMask(
            tf.cast(dispatch_mask, self.compute_dtype),
            tf.cast(combine_array, self.compute_dtype),
        )


def model_garden_switch_layer(
    num_experts,
    intermediate_dim,
    capacity_factor,
    examples_per_group=1.0,
    load_balance_loss_weight=0.01,
    router_z_loss_weight=0.001,
):
    """A Model Garden `MoeLayer` doing Switch top-1 routing with ReLU experts.

    Groups are `examples_per_group` sequences of the `[batch, length, hidden]`
    input; 1.0 makes each sequence one group. The loss weights default to
    `tf_switch.SwitchRouter`'s, so both layers compute the same losses.
    """
    router = TokensChooseTop1MaskedRouter(
        num_experts,
        load_balance_loss_weight=load_balance_loss_weight,
        router_z_loss_weight=router_z_loss_weight,
        export_metrics=False,
    )
    experts = moe.FeedForwardExperts(
        num_experts, intermediate_dim, activation=tf_keras.activations.relu
    )
    return moe.MoeLayer(
        experts,
        router,
        train_capacity_factor=capacity_factor,
        eval_capacity_factor=capacity_factor,
        examples_per_group=examples_per_group,
    )


def expert_capacity(tokens_per_group, num_experts, capacity_factor):
    """Model Garden's slots per expert and group: `round(c * T / N)`."""
    return int(round(capacity_factor * tokens_per_group / num_experts))
