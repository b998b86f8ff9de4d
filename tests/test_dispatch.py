"""The two dispatch implementations move the same tokens the same way."""

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tf_switch import dispatch, routing


@st.composite
def dispatch_problems(draw):
    groups = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 16))
    experts = draw(st.integers(2, 5))
    capacity = draw(st.integers(1, tokens))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    probs = tf.nn.softmax(rng.normal(size=(groups, tokens, experts))).numpy()
    probs = probs.astype(np.float32)
    mask = rng.random((groups, tokens)) < 0.8
    decision = routing.tokens_choose_routing(probs, 1, capacity, mask, False)
    inputs = rng.normal(size=(groups, tokens, 3)).astype(np.float32)
    return inputs, decision


def _round_trip(inputs, decision, method):
    """Dispatch, a per-expert linear map, combine; outputs and input grads."""
    inputs = tf.constant(inputs)
    num_experts = decision["slot_token"].shape[1]
    scale = tf.range(1, num_experts + 1, dtype=tf.float32)[:, None, None]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        expert_inputs = dispatch.dispatch(inputs, decision, method)
        outputs = dispatch.combine(
            expert_inputs * scale, decision, inputs.shape[1], method
        )
        loss = tf.reduce_sum(outputs * tf.sin(tf.range(3, dtype=tf.float32)))
    return outputs, tape.gradient(loss, inputs)


@given(dispatch_problems())
def test_einsum_and_gather_agree(problem):
    inputs, decision = problem
    einsum_out, einsum_grad = _round_trip(inputs, decision, "einsum")
    gather_out, gather_grad = _round_trip(inputs, decision, "gather")
    np.testing.assert_allclose(gather_out, einsum_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gather_grad, einsum_grad, rtol=1e-5, atol=1e-6)


@given(dispatch_problems())
def test_unrouted_tokens_get_exactly_zero(problem):
    inputs, decision = problem
    for method in dispatch.DISPATCH_METHODS:
        outputs, _ = _round_trip(inputs, decision, method)
        dropped = ~np.asarray(decision["kept"][..., 0])
        assert np.all(np.asarray(outputs)[dropped] == 0.0)


def test_routed_token_gets_gate_times_expert_output():
    inputs = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    probs = np.array([[[0.25, 0.75], [0.6, 0.4]]], np.float32)
    decision = routing.tokens_choose_routing(
        probs, 1, capacity=1, mask=np.ones((1, 2), bool), batch_prioritized=False
    )
    for method in dispatch.DISPATCH_METHODS:
        outputs, _ = _round_trip(inputs, decision, method)
        # Token 0 -> expert 1 (scale 2), token 1 -> expert 0 (scale 1).
        np.testing.assert_allclose(outputs[0, 0], 0.75 * 2 * inputs[0, 0])
        np.testing.assert_allclose(outputs[0, 1], 0.6 * 1 * inputs[0, 1])
