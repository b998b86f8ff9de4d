"""Routing math for Switch layers, as small pure functions.

Every function here runs in float32 (paper §2.4, "selective precision": routing
in bfloat16 diverged) and keeps all shapes static so that XLA can compile it,
except `sorted_routing`, whose output has as many rows as routed tokens.

Notation: G groups, T tokens per group, N experts, C expert capacity (slots per
expert per group), k choices per token.

A routing decision is a typed value (`tf_switch.decision`): expert slots of
static shape `[G, N, C]` (`SlotRouting`, `ExpertChoiceRouting`; what XLA
needs), or the kept choices sorted by expert (`SortedRouting`; dynamic, no
empty slot, what dropless routing uses). `tf_switch.dispatch` consumes them.

Reference: Fedus, Zoph & Shazeer, "Switch Transformers", arXiv 2101.03961.
"""

import math

import tensorflow as tf

from tf_switch.decision import ExpertChoiceRouting, SlotRouting, SortedRouting


def expert_capacity(tokens_per_group, num_experts, capacity_factor, min_capacity):
    """Number of slots per expert and group, a Python int.

    C = ceil(capacity_factor * T / N), at least `min_capacity`, at most T
    (paper §2.2, Eq. 3). `capacity_factor=None` means dropless: C = T, so no
    token is ever dropped.

    Example:

    >>> expert_capacity(128, 8, 1.25, 4)
    20
    >>> expert_capacity(128, 8, None, 4)
    128
    """
    if capacity_factor is None:
        return tokens_per_group
    capacity = math.ceil(capacity_factor * tokens_per_group / num_experts)
    return min(max(capacity, min_capacity), tokens_per_group)


def masked_mean(values, mask, axis=None):
    """Mean of `values` over entries where `mask` (broadcast) is true, or 0."""
    mask = tf.broadcast_to(tf.cast(mask, values.dtype), tf.shape(values))
    return tf.math.divide_no_nan(
        tf.reduce_sum(values * mask, axis=axis), tf.reduce_sum(mask, axis=axis)
    )


def expert_fraction(expert_index, num_experts, mask):
    """f_i: fraction of the valid tokens whose top-1 expert is i.

    Counted before capacity drops tokens (paper Eq. 5).

    Args:
        expert_index: `<int32>[G, T]`, each token's argmax expert.
        num_experts: N.
        mask: `<bool>[G, T]`, false for padding tokens.

    Returns:
        `<float32>[N]`, sums to 1 when any token is valid.
    """
    one_hot = tf.one_hot(expert_index, num_experts, dtype=tf.float32)  # [G, T, N]
    return masked_mean(one_hot, mask[..., None], axis=(0, 1))


def load_balancing_loss(router_probs, expert_index, mask):
    """Switch auxiliary loss N * sum_i f_i * P_i, unweighted (paper Eq. 4-6).

    Equals 1 when routing is perfectly balanced. f and P are taken over each
    group's valid tokens and the per-group losses averaged over the groups
    that hold any (Mesh TF and Flaxformer, the paper's code, do the same).
    A mean over groups splits exactly over data-parallel replicas that hold
    equally many groups (equal per-replica batches whose tokens fill whole
    groups): the mean of the replicas' losses is then the loss of their
    global batch, as on one device. Padding tokens count for neither f nor P.

    Args:
        router_probs: `<float32>[G, T, N]`.
        expert_index: `<int32>[G, T]`, each token's argmax expert.
        mask: `<bool>[G, T]`.

    Returns:
        `<float32>[]`.
    """
    num_experts = router_probs.shape[-1]
    token_mask = mask[..., None]  # [G, T, 1]
    one_hot = tf.one_hot(expert_index, num_experts, dtype=tf.float32)  # [G, T, N]
    fraction = masked_mean(one_hot, token_mask, axis=1)  # [G, N]
    mean_prob = masked_mean(router_probs, token_mask, axis=1)  # [G, N]
    group_loss = num_experts * tf.reduce_sum(fraction * mean_prob, axis=-1)  # [G]
    return masked_mean(group_loss, tf.reduce_any(mask, axis=-1))


def router_z_loss(router_logits, mask):
    """ST-MoE router z-loss: mean over valid tokens of logsumexp(logits)^2.

    Unweighted; arXiv 2202.08906, Eq. 5.

    Args:
        router_logits: `<float32>[G, T, N]`.
        mask: `<bool>[G, T]`.

    Returns:
        `<float32>[]`.
    """
    log_z = tf.reduce_logsumexp(router_logits, axis=-1)  # [G, T]
    return masked_mean(tf.square(log_z), mask)


def _choices_in_priority_order(router_probs, top_k, mask, batch_prioritized):
    """Each token's k choices, flattened rank-major in routing priority order.

    All first choices come before any second choice (GShard), and within a
    rank tokens go in sequence order, or, with `batch_prioritized`, by their
    top-1 probability, highest first (paper Appendix D).

    Returns:
        `gates <float32>[G, kT]`, `experts <int32>[G, kT]`, `choice_token
        <int32>[G, kT]` (the token in its group), `choice_valid <bool>[G, kT]`
        and `to_token_major`, a function from `[G, kT]` in this order to
        `[G, T, k]`.
    """
    num_groups = tf.shape(router_probs)[0]
    tokens_per_group = router_probs.shape[1]
    gates, experts = tf.math.top_k(router_probs, k=top_k)  # [G, T, k] each
    token_index = tf.broadcast_to(
        tf.range(tokens_per_group, dtype=tf.int32)[None, :], tf.shape(mask)
    )  # [G, T]
    order = None
    if batch_prioritized:
        order = tf.argsort(gates[..., 0], axis=-1, direction="DESCENDING", stable=True)
        gates = tf.gather(gates, order, batch_dims=1)
        experts = tf.gather(experts, order, batch_dims=1)
        token_index = tf.gather(token_index, order, batch_dims=1)
        mask = tf.gather(mask, order, batch_dims=1)
    # Rank-major order: [G, k, T] flattened to [G, k*T], so that every token's
    # first choice comes before any token's second choice.
    num_choices = top_k * tokens_per_group
    gates = tf.reshape(tf.transpose(gates, [0, 2, 1]), [num_groups, num_choices])
    experts = tf.reshape(tf.transpose(experts, [0, 2, 1]), [num_groups, num_choices])
    choice_token = tf.tile(token_index, [1, top_k])  # [G, k*T]
    choice_valid = tf.tile(mask, [1, top_k])  # [G, k*T]

    def to_token_major(choices):  # [G, k*T] in priority order -> [G, T, k]
        choices = tf.reshape(choices, [num_groups, top_k, tokens_per_group])
        choices = tf.transpose(choices, [0, 2, 1])
        if order is not None:
            choices = tf.gather(choices, tf.argsort(order, axis=-1), batch_dims=1)
        return choices

    return gates, experts, choice_token, choice_valid, to_token_major


def tokens_choose_routing(router_probs, top_k, capacity, mask, batch_prioritized):
    """Top-k tokens-choose routing with per-expert capacity (k=1 is Switch).

    Each token picks its k most probable experts. Each expert takes at most
    `capacity` of the choices made for it, in priority order: all first
    choices before any second choice (GShard), and within a rank by sequence
    order, or, with `batch_prioritized`, by the token's top-1 probability,
    highest first (paper Appendix D; leaks the future, so not for causal use).
    Choices beyond capacity are dropped: the layer outputs 0 for them.

    Args:
        router_probs: `<float32>[G, T, N]`.
        top_k: k, a Python int.
        capacity: C, a Python int.
        mask: `<bool>[G, T]`; padding tokens take no slot.
        batch_prioritized: Python bool.

    Returns:
        A `tf_switch.decision.SlotRouting`.
    """
    num_groups = tf.shape(router_probs)[0]
    num_experts = router_probs.shape[2]
    gates, experts, choice_token, choice_valid, to_token_major = (
        _choices_in_priority_order(router_probs, top_k, mask, batch_prioritized)
    )
    position = positions_in_experts(experts, choice_valid, num_experts)  # [G, kT]
    kept = choice_valid & (position < capacity)  # [G, kT]

    # Scatter kept choices into their slots; dropped ones go to a spare slot
    # N*C that is cut off afterwards.
    num_slots = num_experts * capacity
    slot = tf.where(kept, experts * capacity + position, num_slots)  # [G, kT]
    group = tf.broadcast_to(tf.range(num_groups)[:, None], tf.shape(slot))
    indices = tf.stack([group, slot], axis=-1)  # [G, kT, 2]
    scatter_shape = tf.stack([num_groups, num_slots + 1])
    kept_int = tf.cast(kept, tf.int32)
    slot_token_plus_one = tf.scatter_nd(
        indices, (choice_token + 1) * kept_int, scatter_shape
    )[:, :num_slots]
    slot_weight = tf.scatter_nd(
        indices, gates * tf.cast(kept, gates.dtype), scatter_shape
    )[:, :num_slots]
    slot_shape = [num_groups, num_experts, capacity]
    slot_mask = slot_token_plus_one > 0
    slot_token = tf.maximum(slot_token_plus_one - 1, 0)
    return SlotRouting(
        slot_token=tf.reshape(slot_token, slot_shape),
        slot_weight=tf.reshape(slot_weight, slot_shape),
        slot_mask=tf.reshape(slot_mask, slot_shape),
        choice_slot=to_token_major(slot),
        choice_weight=to_token_major(gates * tf.cast(kept, gates.dtype)),
        kept=to_token_major(kept),
    )


def sorted_routing(router_probs, top_k, capacity, mask, batch_prioritized):
    """Top-k tokens-choose routing as one buffer of choices sorted by expert.

    The same choices, priorities and drops as `tokens_choose_routing`, but
    laid out without slots: the kept choices of all groups, sorted by expert
    (stable, so each expert's rows stay in priority order), M rows in all.
    With `capacity=None` (dropless) every valid choice is kept and M = k times
    the number of valid tokens; each expert then computes exactly its own
    tokens. M is dynamic: not for XLA (use `tokens_choose_routing`).

    Args:
        router_probs: `<float32>[G, T, N]`.
        top_k: k, a Python int.
        capacity: C, a Python int, or None for dropless routing.
        mask: `<bool>[G, T]`; padding tokens are not routed.
        batch_prioritized: Python bool.

    Returns:
        A `tf_switch.decision.SortedRouting`.
    """
    num_groups = tf.shape(router_probs)[0]
    tokens_per_group, num_experts = router_probs.shape[1], router_probs.shape[2]
    gates, experts, choice_token, choice_valid, to_token_major = (
        _choices_in_priority_order(router_probs, top_k, mask, batch_prioritized)
    )
    kept = choice_valid  # [G, kT]
    if capacity is not None:
        position = positions_in_experts(experts, choice_valid, num_experts)
        kept = choice_valid & (position < capacity)
    # One stable sort of all the call's choices by expert, dropped ones last;
    # flattening group-major keeps the priority order inside each expert.
    bucket = tf.reshape(tf.where(kept, experts, num_experts), [-1])  # [G*kT]
    order = tf.argsort(bucket, stable=True)  # [G*kT]
    num_kept = tf.reduce_sum(tf.cast(kept, tf.int32))
    sorted_choice = order[:num_kept]  # [M]
    global_token = choice_token + tf.range(num_groups)[:, None] * tokens_per_group
    sorted_token = tf.gather(tf.reshape(global_token, [-1]), sorted_choice)
    sorted_weight = tf.gather(tf.reshape(gates, [-1]), sorted_choice)
    expert_sizes = tf.math.unsorted_segment_sum(
        tf.ones_like(bucket), bucket, num_experts + 1
    )[:num_experts]  # [N]
    row = tf.reshape(tf.math.invert_permutation(order), tf.shape(kept))  # [G, kT]
    choice_row = tf.where(kept, row, num_kept)
    return SortedRouting(
        sorted_token=sorted_token,
        sorted_weight=sorted_weight,
        expert_sizes=expert_sizes,
        choice_row=to_token_major(choice_row),
        choice_weight=to_token_major(gates * tf.cast(kept, gates.dtype)),
        kept=to_token_major(kept),
    )


def experts_choose_routing(router_probs, capacity, mask):
    """Expert-choice routing: each expert takes its C most probable tokens.

    Zhou et al., "Mixture-of-Experts with Expert Choice Routing", arXiv
    2202.09368. Balanced by construction; a token may be taken by several
    experts or by none. Which tokens an expert takes depends on the whole
    group, later tokens included, so it is not for causal models.

    Args:
        router_probs: `<float32>[G, T, N]`.
        capacity: C, a Python int.
        mask: `<bool>[G, T]`; padding tokens are never taken.

    Returns:
        A `tf_switch.decision.ExpertChoiceRouting`.
    """
    # Probabilities are >= 0, so -1 puts padding last.
    scores = tf.where(mask[..., None], router_probs, -1.0)  # [G, T, N]
    slot_weight, slot_token = tf.math.top_k(
        tf.transpose(scores, [0, 2, 1]), k=capacity
    )  # [G, N, C] each
    slot_mask = tf.gather(mask, slot_token, batch_dims=1)  # [G, N, C]
    slot_weight = tf.where(slot_mask, slot_weight, 0.0)
    group = tf.broadcast_to(
        tf.range(tf.shape(slot_token)[0])[:, None, None], tf.shape(slot_token)
    )
    times_taken = tf.scatter_nd(
        tf.stack([group, slot_token], axis=-1),
        tf.cast(slot_mask, tf.int32),
        tf.shape(mask),
    )  # [G, T]
    return ExpertChoiceRouting(
        slot_token=slot_token,
        slot_weight=slot_weight,
        slot_mask=slot_mask,
        kept=(times_taken > 0)[..., None],
    )


def positions_in_experts(experts, valid, num_experts):
    """Each choice's position in its expert's buffer, by sorting, not cumsum.

    The position is the number of earlier valid choices in the group that
    picked the same expert. Sorting the choices by (expert, order) finds it in
    O(M log M) per group on `[G, M]` tensors; a one-hot cumsum needs `[G, M, N]`
    ones, whose scan dominated routing at large N.

    Args:
        experts: `<int32>[G, M]`, the expert of each choice, in priority order.
        valid: `<bool>[G, M]`; invalid choices take no position.
        num_experts: N.

    Returns:
        `<int32>[G, M]`; arbitrary for invalid choices.
    """
    num_groups = tf.shape(experts)[0]
    num_choices = experts.shape[1]
    bucket = tf.where(valid, experts, num_experts)  # [G, M]; invalid sort last
    sort_key = bucket * num_choices + tf.range(num_choices)[None, :]  # unique
    order = tf.argsort(sort_key, axis=-1)  # [G, M]
    rank = tf.argsort(order, axis=-1)  # [G, M], the inverse permutation
    group = tf.range(num_groups)[:, None]
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(bucket),
        group * (num_experts + 1) + bucket,
        num_groups * (num_experts + 1),
    )  # [G*(N+1)]
    starts = tf.cumsum(
        tf.reshape(counts, [num_groups, num_experts + 1]), axis=-1, exclusive=True
    )  # [G, N+1]
    return rank - tf.gather(starts, bucket, batch_dims=1)
