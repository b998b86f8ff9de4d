"""Moving tokens to their experts and back: three methods, same results.

The method is chosen by the caller (`SwitchOptions.dispatch`) and must suit the
decision's layout (`tf_switch.decision`); a mismatch is an error.

`"einsum"` and `"gather"` take the slot layouts (`SlotRouting`,
`ExpertChoiceRouting`) and lay the expert inputs out expert-major,
`[N, G*C, d]`, static shapes that XLA compiles; the experts run as one
batched matmul per weight matrix, empty slots included.

- `"einsum"`: one-hot dispatch and combine tensors `[G, N, C, T]` contracted
  with einsum (GShard, Mesh TensorFlow). Dense matmuls that TPUs like; costs
  about 2*c*T*d multiply-adds per token each way, so keep groups small.
- `"gather"`: index gathers. Moves O(T*d) data per group and no multiply-adds;
  what CPUs and GPUs like, and it does not grow with the group size. With
  tokens-choose routing every pass, forward and backward, is a gather (Tutel's
  fast dispatch): the backward of a gather is a gather through the inverse
  map (`choice_slot`), not a scatter-add. Expert-choice routing, where a token
  may fill any number of slots, combines with a segment sum.

- `"sorted"`: takes `SortedRouting`, the kept choices sorted by expert: the
  expert inputs are `[M, d]`, one contiguous segment per expert, with no empty
  slot, so each expert computes exactly its own tokens (per-expert 2-D
  matmuls, `ExpertFFN(..., expert_sizes=...)`). Every pass is a gather, as
  for `"gather"`. M is dynamic, so not under XLA; what dropless routing uses.

For an empty slot the expert input is zero (einsum) or an arbitrary token of
the group (gather); either way its combine weight is 0, so outputs and
gradients agree.
"""

import tensorflow as tf

from tf_switch.decision import ExpertChoiceRouting, SlotRouting, SortedRouting

DISPATCH_METHODS = ("einsum", "gather", "sorted")
# The decision layouts each method moves.
LAYOUTS = {
    "einsum": (SlotRouting, ExpertChoiceRouting),
    "gather": (SlotRouting, ExpertChoiceRouting),
    "sorted": (SortedRouting,),
}


def _one_hot_slots(slot_token, slot_mask, tokens_per_group, dtype):
    """`<dtype>[G, N, C, T]`: 1 where slot (n, c) holds token t."""
    one_hot = tf.one_hot(slot_token, tokens_per_group, dtype=dtype)
    return one_hot * tf.cast(slot_mask, dtype)[..., None]


def _global_slot_token(slot_token, tokens_per_group):
    """`<int32>[N, G*C]`: each slot's token as an index into all G*T tokens."""
    num_experts = slot_token.shape[1]
    group_offset = tf.range(tf.shape(slot_token)[0]) * tokens_per_group
    global_token = slot_token + group_offset[:, None, None]  # [G, N, C]
    return tf.reshape(tf.transpose(global_token, [1, 0, 2]), [num_experts, -1])


def _global_token_slot(token_slot, num_experts, capacity):
    """`<int32>[G*T, k]`: each choice's slot as an index into all N*G*C slots.

    `token_slot` holds n * C + c per group, or N*C when dropped; slots are laid
    out expert-major, [N, G, C]. A dropped choice maps to slot 0: callers
    mask it out.
    """
    num_groups = tf.shape(token_slot)[0]
    expert, position = token_slot // capacity, token_slot % capacity
    group = tf.range(num_groups)[:, None, None]
    global_slot = (expert * num_groups + group) * capacity + position
    global_slot = tf.where(expert < num_experts, global_slot, 0)
    return tf.reshape(global_slot, [-1, token_slot.shape[2]])


def _sum_over_choices(rows):
    """`[M, k, d]` -> `[M, d]`; a reshape, not a reduction, when k is 1."""
    if rows.shape[1] == 1:
        return tf.reshape(rows, [-1, rows.shape[2]])
    return tf.reduce_sum(rows, axis=1)


def _dispatch_by_gather(flat_inputs, slot_source, token_destination, token_kept):
    """Slot rows `flat_inputs[slot_source]` whose gradient is also a gather."""

    @tf.custom_gradient
    def gather(inputs):
        def grad(slot_grads):
            # An empty slot's input is an arbitrary token, but its gradient is
            # 0 (its combine weight is 0), so leaving it out is exact.
            rows = tf.gather(slot_grads, token_destination)  # [M, k, d]
            return _sum_over_choices(rows * token_kept[..., None])

        return tf.gather(inputs, slot_source), grad

    return gather(flat_inputs)


def _combine_by_gather(
    flat_outputs, token_weight, token_destination, slot_source, slot_weight
):
    """sum_k token_weight * flat_outputs[token_destination], by gathers only.

    A dropped choice points at slot 0 with weight 0, so it adds nothing, and
    its weight's gradient reaches no router probability (the weight is the
    gate times 0).
    """

    @tf.custom_gradient
    def combine_rows(outputs, weight):
        rows = tf.gather(outputs, token_destination)  # [M, k, d]
        combined = _sum_over_choices(rows * weight[..., None])

        def grad(combined_grads):
            output_grads = tf.gather(combined_grads, slot_source) * slot_weight
            weight_grads = tf.reduce_sum(rows * combined_grads[:, None, :], axis=-1)
            return output_grads, weight_grads

        return combined, grad

    return combine_rows(flat_outputs, token_weight)


def _check_layout(decision, method):
    if method not in LAYOUTS:
        raise ValueError(
            "Invalid value received for argument `method`. Expected one of "
            f"{DISPATCH_METHODS}. Received: method={method!r}"
        )
    if not isinstance(decision, LAYOUTS[method]):
        expected = " or ".join(layout.__name__ for layout in LAYOUTS[method])
        raise TypeError(
            f"dispatch method {method!r} moves a {expected}; received a "
            f"{type(decision).__name__}. Route with the matching function of "
            "`tf_switch.routing` (`sorted_routing` for 'sorted')."
        )


def _pad_one_row(rows):
    """`[M, d]` -> `[M + 1, d]` with a zero row M: where dropped choices point."""
    return tf.concat([rows, tf.zeros([1, rows.shape[1]], rows.dtype)], axis=0)


def _dispatch_sorted(flat_inputs, decision):
    """`flat_inputs[sorted_token]`, `[M, d]`; its gradient is a gather too."""
    choice_row = tf.reshape(decision.choice_row, [-1, decision.choice_row.shape[2]])

    @tf.custom_gradient
    def gather(inputs):
        def grad(row_grads):
            # Dropped choices point at the zero row M.
            rows = tf.gather(_pad_one_row(row_grads), choice_row)  # [G*T, k, d]
            return _sum_over_choices(rows)

        return tf.gather(inputs, decision.sorted_token), grad

    return gather(flat_inputs)


def _combine_sorted(expert_outputs, decision, dtype):
    """sum_k choice_weight * expert_outputs[choice_row], `[G*T, d]`."""
    choice_row = tf.reshape(decision.choice_row, [-1, decision.choice_row.shape[2]])
    sorted_weight = tf.cast(tf.stop_gradient(decision.sorted_weight), dtype)

    @tf.custom_gradient
    def combine_rows(outputs, weight):
        # Dropped choices point at the zero row M, with weight 0.
        rows = tf.gather(_pad_one_row(outputs), choice_row)  # [G*T, k, d]
        combined = _sum_over_choices(rows * weight[..., None])

        def grad(combined_grads):
            output_grads = (
                tf.gather(combined_grads, decision.sorted_token)
                * sorted_weight[:, None]
            )
            weight_grads = tf.reduce_sum(rows * combined_grads[:, None, :], axis=-1)
            return output_grads, weight_grads

        return combined, grad

    choice_weight = tf.reshape(
        decision.choice_weight, [-1, decision.choice_weight.shape[2]]
    )
    return combine_rows(expert_outputs, tf.cast(choice_weight, dtype))


def dispatch(inputs, decision, method):
    """Gathers each expert's tokens.

    Args:
        inputs: `<dtype>[G, T, d]`.
        decision: a layout of `tf_switch.decision` that `method` moves.
        method: `"einsum"`, `"gather"` or `"sorted"`.

    Returns:
        `<dtype>[N, G*C, d]`, expert-major (einsum, gather), or `<dtype>[M, d]`
        sorted by expert, `decision.expert_sizes` rows each (sorted).

    Raises:
        TypeError: when `method` does not move this layout.
    """
    _check_layout(decision, method)
    tokens_per_group, hidden_dim = inputs.shape[1], inputs.shape[2]
    flat_inputs = tf.reshape(inputs, [-1, hidden_dim])  # [G*T, d]
    if method == "sorted":
        return _dispatch_sorted(flat_inputs, decision)
    slot_token = decision.slot_token
    num_experts = slot_token.shape[1]
    if method == "einsum":
        one_hot = _one_hot_slots(
            slot_token, decision.slot_mask, tokens_per_group, inputs.dtype
        )  # [G, N, C, T]
        expert_inputs = tf.einsum("gnct,gtd->ngcd", one_hot, inputs)
        return tf.reshape(expert_inputs, [num_experts, -1, hidden_dim])
    slot_source = _global_slot_token(slot_token, tokens_per_group)  # [N, G*C]
    if isinstance(decision, ExpertChoiceRouting):
        # A token may fill many slots: the gradient is a scatter-add.
        return tf.gather(flat_inputs, slot_source)
    token_destination = _global_token_slot(
        decision.choice_slot, num_experts, slot_token.shape[2]
    )
    token_kept = tf.reshape(decision.kept, tf.shape(token_destination))
    expert_inputs = _dispatch_by_gather(
        flat_inputs,
        tf.reshape(slot_source, [-1]),
        token_destination,
        tf.cast(token_kept, inputs.dtype),
    )
    return tf.reshape(expert_inputs, [num_experts, -1, hidden_dim])


def combine(expert_outputs, decision, tokens_per_group, method):
    """Sends each expert output back to its token, scaled by the router gate.

    A token that no expert computed (dropped, or padding) gets exactly 0.

    Args:
        expert_outputs: `<dtype>[N, G*C, d]` (einsum, gather) or `<dtype>[M, d]`
            (sorted), as `dispatch` laid them out.
        decision: the layout that `dispatch` was given.
        tokens_per_group: T, a Python int.
        method: `"einsum"`, `"gather"` or `"sorted"`.

    Returns:
        `<dtype>[G, T, d]`.
    """
    _check_layout(decision, method)
    hidden_dim = expert_outputs.shape[-1]
    dtype = expert_outputs.dtype
    if method == "sorted":
        outputs = _combine_sorted(expert_outputs, decision, dtype)  # [G*T, d]
        return tf.reshape(outputs, [-1, tokens_per_group, hidden_dim])
    num_experts = expert_outputs.shape[0]
    slot_token, slot_weight = decision.slot_token, decision.slot_weight
    num_groups = tf.shape(slot_token)[0]
    capacity = slot_token.shape[2]
    if method == "einsum":
        combine_tensor = (
            _one_hot_slots(slot_token, decision.slot_mask, tokens_per_group, dtype)
            * tf.cast(slot_weight, dtype)[..., None]
        )  # [G, N, C, T]
        expert_outputs = tf.reshape(
            expert_outputs, [num_experts, num_groups, capacity, hidden_dim]
        )
        return tf.einsum("gnct,ngcd->gtd", combine_tensor, expert_outputs)
    weight = tf.reshape(tf.transpose(slot_weight, [1, 0, 2]), [num_experts, -1, 1])
    if isinstance(decision, SlotRouting):
        flat_outputs = tf.reshape(expert_outputs, [-1, hidden_dim])  # [N*G*C, d]
        choice_weight = decision.choice_weight
        outputs = _combine_by_gather(
            flat_outputs,
            tf.cast(tf.reshape(choice_weight, [-1, choice_weight.shape[2]]), dtype),
            _global_token_slot(decision.choice_slot, num_experts, capacity),
            tf.reshape(_global_slot_token(slot_token, tokens_per_group), [-1]),
            tf.cast(tf.stop_gradient(tf.reshape(weight, [-1, 1])), dtype),
        )
        return tf.reshape(outputs, [num_groups, tokens_per_group, hidden_dim])
    weighted = expert_outputs * tf.cast(weight, dtype)  # [N, G*C, d]
    outputs = tf.math.unsorted_segment_sum(
        tf.reshape(weighted, [-1, hidden_dim]),
        tf.reshape(_global_slot_token(slot_token, tokens_per_group), [-1]),
        num_groups * tokens_per_group,
    )  # [G*T, d]
    return tf.reshape(outputs, [num_groups, tokens_per_group, hidden_dim])
