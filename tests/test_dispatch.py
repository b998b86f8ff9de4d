"""The three dispatch methods move the same tokens the same way."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tf_switch import dispatch, routing


@st.composite
def dispatch_problems(draw):
    groups = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 16))
    experts = draw(st.integers(2, 5))
    top_k = draw(st.integers(1, 2))
    capacity = draw(st.integers(1, tokens))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    probs = tf.nn.softmax(rng.normal(size=(groups, tokens, experts))).numpy()
    probs = probs.astype(np.float32)
    mask = rng.random((groups, tokens)) < 0.8
    inputs = rng.normal(size=(groups, tokens, 3)).astype(np.float32)
    return inputs, probs, mask, top_k, capacity


def _decision(method, probs, mask, top_k, capacity):
    if method == "sorted":
        return routing.sorted_routing(probs, top_k, capacity, mask, False)
    return routing.tokens_choose_routing(
        probs, top_k, capacity or probs.shape[1], mask, False
    )


def _expert_scale(decision, method, num_experts):
    """Expert n multiplies its tokens by n + 1, in the method's layout."""
    scale = tf.range(1, num_experts + 1, dtype=tf.float32)
    if method == "sorted":
        return tf.repeat(scale, decision.expert_sizes)[:, None]  # [M, 1]
    return scale[:, None, None]  # [N, 1, 1]


def _round_trip(inputs, probs, mask, top_k, capacity, method):
    """Routing, dispatch, a per-expert linear map, combine; outputs and the
    gradients of a fixed projection of them w.r.t. inputs and probabilities."""
    inputs, probs = tf.constant(inputs), tf.constant(probs)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([inputs, probs])
        decision = _decision(method, probs, mask, top_k, capacity)
        expert_inputs = dispatch.dispatch(inputs, decision, method)
        scale = _expert_scale(decision, method, probs.shape[2])
        outputs = dispatch.combine(
            expert_inputs * scale, decision, inputs.shape[1], method
        )
        loss = tf.reduce_sum(outputs * tf.sin(tf.range(3, dtype=tf.float32)))
    return outputs, tape.gradient(loss, inputs), tape.gradient(loss, probs), decision


@given(dispatch_problems(), st.booleans())
def test_all_methods_agree(problem, dropless):
    inputs, probs, mask, top_k, capacity = problem
    capacity = None if dropless else capacity
    results = {
        method: _round_trip(inputs, probs, mask, top_k, capacity, method)
        for method in dispatch.DISPATCH_METHODS
    }
    reference = results["einsum"]
    for method in ("gather", "sorted"):
        for got, want in zip(results[method][:3], reference[:3], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@given(dispatch_problems(), st.booleans())
def test_unrouted_tokens_get_exactly_zero(problem, dropless):
    inputs, probs, mask, top_k, capacity = problem
    capacity = None if dropless else capacity
    for method in dispatch.DISPATCH_METHODS:
        outputs, _, _, decision = _round_trip(
            inputs, probs, mask, top_k, capacity, method
        )
        unrouted = ~np.asarray(decision.kept).any(-1)
        assert np.all(np.asarray(outputs)[unrouted] == 0.0)
        if dropless:  # only padding is unrouted
            np.testing.assert_array_equal(unrouted, ~mask)


def test_routed_token_gets_gate_times_expert_output():
    inputs = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    probs = np.array([[[0.25, 0.75], [0.6, 0.4]]], np.float32)
    mask = np.ones((1, 2), bool)
    for method in dispatch.DISPATCH_METHODS:
        outputs, *_ = _round_trip(inputs, probs, mask, 1, 1, method)
        # Token 0 -> expert 1 (scale 2), token 1 -> expert 0 (scale 1).
        np.testing.assert_allclose(outputs[0, 0], 0.75 * 2 * inputs[0, 0])
        np.testing.assert_allclose(outputs[0, 1], 0.6 * 1 * inputs[0, 1])


def test_sorted_dispatch_with_nothing_routed_gives_zeros():
    # All padding: no row at all, M = 0.
    inputs = np.ones((2, 3, 3), np.float32)
    probs = np.full((2, 3, 2), 0.5, np.float32)
    outputs, input_grads, _, decision = _round_trip(
        inputs, probs, np.zeros((2, 3), bool), 1, None, "sorted"
    )
    assert decision.sorted_token.shape == (0,)
    np.testing.assert_array_equal(outputs, np.zeros_like(inputs))
    np.testing.assert_array_equal(input_grads, np.zeros_like(inputs))


def test_a_method_refuses_the_other_layout():
    probs = np.full((1, 4, 2), 0.5, np.float32)
    mask = np.ones((1, 4), bool)
    inputs = tf.ones((1, 4, 3))
    sorted_decision = routing.sorted_routing(probs, 1, None, mask, False)
    slot_decision = routing.tokens_choose_routing(probs, 1, 2, mask, False)
    with pytest.raises(TypeError, match="'gather' moves a SlotRouting"):
        dispatch.dispatch(inputs, sorted_decision, "gather")
    with pytest.raises(TypeError, match="'sorted' moves a SortedRouting"):
        dispatch.dispatch(inputs, slot_decision, "sorted")
