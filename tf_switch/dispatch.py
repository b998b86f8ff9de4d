"""Moving tokens to expert slots and back: two implementations, same results.

Both take the slot form of a routing decision (see `tf_switch.routing`) and lay
the expert inputs out expert-major, `[N, G*C, d]`, so that the experts run as
one batched matmul per weight matrix.

- `"einsum"`: one-hot dispatch and combine tensors `[G, N, C, T]` contracted
  with einsum (GShard, Mesh TensorFlow). Dense matmuls that TPUs like; costs
  about 2*c*T*d multiply-adds per token each way, so keep groups small.
- `"gather"`: index gathers and a segment sum. Moves O(T*d) data per group and
  no multiply-adds; what CPUs and GPUs like, and it does not grow with the
  group size.

For an empty slot the expert input is zero (einsum) or an arbitrary token of
the group (gather); either way its combine weight is 0, so outputs and
gradients agree.
"""

import tensorflow as tf

DISPATCH_METHODS = ("einsum", "gather")


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


def dispatch(inputs, routing, method):
    """Gathers each expert's tokens.

    Args:
        inputs: `<dtype>[G, T, d]`.
        routing: dict with `slot_token` and `slot_mask`, `[G, N, C]`.
        method: `"einsum"` or `"gather"`.

    Returns:
        `<dtype>[N, G*C, d]`, expert-major.
    """
    tokens_per_group, hidden_dim = inputs.shape[1], inputs.shape[2]
    slot_token = routing["slot_token"]
    num_experts = slot_token.shape[1]
    if method == "einsum":
        one_hot = _one_hot_slots(
            slot_token, routing["slot_mask"], tokens_per_group, inputs.dtype
        )  # [G, N, C, T]
        expert_inputs = tf.einsum("gnct,gtd->ngcd", one_hot, inputs)
        return tf.reshape(expert_inputs, [num_experts, -1, hidden_dim])
    flat_inputs = tf.reshape(inputs, [-1, hidden_dim])  # [G*T, d]
    return tf.gather(flat_inputs, _global_slot_token(slot_token, tokens_per_group))


def combine(expert_outputs, routing, tokens_per_group, method):
    """Sends each slot's output back to its token, scaled by the router gate.

    A token that holds no slot (dropped, or padding) gets exactly 0.

    Args:
        expert_outputs: `<dtype>[N, G*C, d]`.
        routing: dict with `slot_token`, `slot_weight` and `slot_mask`,
            `[G, N, C]`.
        tokens_per_group: T, a Python int.
        method: `"einsum"` or `"gather"`.

    Returns:
        `<dtype>[G, T, d]`.
    """
    num_experts, _, hidden_dim = expert_outputs.shape
    dtype = expert_outputs.dtype
    slot_token, slot_weight = routing["slot_token"], routing["slot_weight"]
    num_groups = tf.shape(slot_token)[0]
    capacity = slot_token.shape[2]
    if method == "einsum":
        combine_tensor = (
            _one_hot_slots(slot_token, routing["slot_mask"], tokens_per_group, dtype)
            * tf.cast(slot_weight, dtype)[..., None]
        )  # [G, N, C, T]
        expert_outputs = tf.reshape(
            expert_outputs, [num_experts, num_groups, capacity, hidden_dim]
        )
        return tf.einsum("gnct,ngcd->gtd", combine_tensor, expert_outputs)
    weight = tf.reshape(tf.transpose(slot_weight, [1, 0, 2]), [num_experts, -1, 1])
    weighted = expert_outputs * tf.cast(weight, dtype)  # [N, G*C, d]
    outputs = tf.math.unsorted_segment_sum(
        tf.reshape(weighted, [-1, hidden_dim]),
        tf.reshape(_global_slot_token(slot_token, tokens_per_group), [-1]),
        num_groups * tokens_per_group,
    )  # [G*T, d]
    return tf.reshape(outputs, [num_groups, tokens_per_group, hidden_dim])
