"""Routing math against hand-computed values and invariants."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tf_switch import routing


@pytest.mark.parametrize(
    "tokens, experts, factor, minimum, expected",
    [
        (128, 8, 1.25, 4, 20),  # ceil(1.25 * 16)
        (128, 32, 1.0, 4, 4),  # ceil(4) = 4
        (128, 32, 0.5, 4, 4),  # ceil(2) raised to min_capacity
        (10, 4, 1.0, 1, 3),  # ceil(2.5)
        (8, 2, 4.0, 1, 8),  # ceil(16) capped at T
        (128, 8, None, 4, 128),  # dropless
    ],
)
def test_expert_capacity(tokens, experts, factor, minimum, expected):
    capacity = routing.expert_capacity(tokens, experts, factor, minimum)
    assert capacity == expected
    assert isinstance(capacity, int)


def test_load_balancing_loss_matches_formula_by_hand():
    # One group, 4 tokens, 2 experts.
    probs = np.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]], np.float32)
    top1 = probs.argmax(-1).astype(np.int32)  # experts 0, 0, 1, 0
    # f = [3/4, 1/4]; P = [mean(.9,.8,.3,.6), mean(.1,.2,.7,.4)] = [.65, .35]
    expected = 2 * (0.75 * 0.65 + 0.25 * 0.35)
    mask = np.ones((1, 4), bool)
    loss = routing.load_balancing_loss(probs, top1, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_ignores_padding():
    probs = np.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]], np.float32)
    top1 = probs.argmax(-1).astype(np.int32)
    mask = np.array([[True, False, True, False]])
    # Valid tokens 0 and 2: f = [1/2, 1/2], P = [.6, .4].
    expected = 2 * (0.5 * 0.6 + 0.5 * 0.4)
    loss = routing.load_balancing_loss(probs, top1, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_averages_groups_and_skips_empty_ones():
    probs = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2]],  # f = [1, 0], P = [.85, .15]: 2 * .85
            [[0.3, 0.7], [0.6, 0.4]],  # f = [.5, .5], P = [.45, .55]: 1
            [[0.5, 0.5], [0.5, 0.5]],  # all padding: not counted
        ],
        np.float32,
    )
    top1 = probs.argmax(-1).astype(np.int32)
    mask = np.array([[True, True], [True, True], [False, False]])
    loss = routing.load_balancing_loss(probs, top1, mask)
    assert float(loss) == pytest.approx((1.7 + 1.0) / 2, rel=1e-6)


def test_balanced_routing_scores_one():
    probs = np.full((2, 8, 4), 0.25, np.float32)
    top1 = np.tile(np.arange(4, dtype=np.int32), 4).reshape(2, 8)
    loss = routing.load_balancing_loss(probs, top1, np.ones((2, 8), bool))
    assert float(loss) == pytest.approx(1.0)


def test_router_z_loss_by_hand():
    logits = np.array([[[0.0, 0.0], [1.0, 2.0]]], np.float32)
    log_z = [math.log(2.0), math.log(math.exp(1) + math.exp(2))]
    expected = (log_z[0] ** 2 + log_z[1] ** 2) / 2
    loss = routing.router_z_loss(logits, np.ones((1, 2), bool))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    masked = routing.router_z_loss(logits, np.array([[False, True]]))
    assert float(masked) == pytest.approx(log_z[1] ** 2, rel=1e-6)


def test_all_tokens_to_one_expert_keeps_the_first_capacity_tokens():
    # Every token prefers expert 0; capacity 2: tokens 0 and 1 are kept in
    # sequence order, the rest dropped.
    probs = np.tile(np.array([0.7, 0.1, 0.1, 0.1], np.float32), (1, 6, 1))
    decision = routing.tokens_choose_routing(
        probs, top_k=1, capacity=2, mask=np.ones((1, 6), bool), batch_prioritized=False
    )
    np.testing.assert_array_equal(decision.kept[0, :, 0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(decision.slot_token[0, 0], [0, 1])
    np.testing.assert_array_equal(decision.slot_mask[0, 0], [True, True])
    assert not np.any(decision.slot_mask[0, 1:])
    np.testing.assert_allclose(decision.slot_weight[0, 0], [0.7, 0.7])


def test_padding_takes_no_slot():
    probs = np.tile(np.array([0.7, 0.3], np.float32), (1, 4, 1))
    mask = np.array([[False, True, False, True]])
    decision = routing.tokens_choose_routing(
        probs, top_k=1, capacity=2, mask=mask, batch_prioritized=False
    )
    # Padding tokens 0 and 2 do not use up expert 0's capacity.
    np.testing.assert_array_equal(decision.slot_token[0, 0], [1, 3])
    np.testing.assert_array_equal(decision.kept[0, :, 0], [0, 1, 0, 1])


def test_batch_prioritized_routing_keeps_the_most_confident_tokens():
    top = np.array([0.5, 0.9, 0.6, 0.8], np.float32)
    probs = np.stack([top, 1 - top], axis=-1)[None]  # all prefer expert 0
    decision = routing.tokens_choose_routing(
        probs, top_k=1, capacity=2, mask=np.ones((1, 4), bool), batch_prioritized=True
    )
    np.testing.assert_array_equal(decision.kept[0, :, 0], [0, 1, 0, 1])
    np.testing.assert_array_equal(decision.slot_token[0, 0], [1, 3])


def test_top2_gives_every_first_choice_priority_over_second_choices():
    # Expert 0 is token 0's second choice and tokens 1-2's first choice;
    # capacity 2 keeps the two first choices and drops token 0's second.
    probs = np.array([[[0.3, 0.6, 0.1], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]]], np.float32)
    decision = routing.tokens_choose_routing(
        probs, top_k=2, capacity=2, mask=np.ones((1, 3), bool), batch_prioritized=False
    )
    kept = np.asarray(decision.kept[0])  # [T, k]
    np.testing.assert_array_equal(kept[:, 0], [1, 1, 1])
    assert not kept[0, 1]  # token 0's second choice (expert 0) dropped
    np.testing.assert_array_equal(decision.slot_token[0, 0], [1, 2])


def test_experts_choose_takes_each_experts_top_tokens():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]], np.float32)
    decision = routing.experts_choose_routing(
        probs, capacity=2, mask=np.ones((1, 4), bool)
    )
    np.testing.assert_array_equal(decision.slot_token[0, 0], [0, 2])
    np.testing.assert_array_equal(decision.slot_token[0, 1], [1, 3])
    np.testing.assert_allclose(decision.slot_weight[0, 1], [0.8, 0.7])
    assert np.all(decision.kept)


def test_experts_choose_never_takes_padding():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]], np.float32)
    mask = np.array([[False, True, True]])
    decision = routing.experts_choose_routing(probs, capacity=3, mask=mask)
    taken = np.asarray(decision.slot_token)[np.asarray(decision.slot_mask)]
    assert 0 not in taken
    np.testing.assert_array_equal(decision.kept[0, :, 0], [0, 1, 1])


@st.composite
def routing_problems(draw):
    groups = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 24))
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(2, experts)))
    capacity = draw(st.integers(1, tokens))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(groups, tokens, experts)).astype(np.float32)
    probs = tf.nn.softmax(logits).numpy()
    mask = rng.random((groups, tokens)) < 0.8
    return probs, top_k, capacity, mask, draw(st.booleans())


@given(routing_problems())
def test_tokens_choose_invariants(problem):
    probs, top_k, capacity, mask, prioritized = problem
    decision = routing.tokens_choose_routing(probs, top_k, capacity, mask, prioritized)
    slot_token = np.asarray(decision.slot_token)
    slot_mask = np.asarray(decision.slot_mask)
    kept = np.asarray(decision.kept)
    groups, tokens, experts = probs.shape
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
    # Slots hold exactly the kept choices: no expert over capacity (by
    # construction of [G, N, C]), each token in at most k slots and never
    # twice in one expert, padding in none, each in one of its top-k experts.
    assert slot_mask.sum() == kept.sum()
    for g in range(groups):
        counts = np.zeros(tokens, int)
        for e in range(experts):
            held = slot_token[g, e][slot_mask[g, e]]
            assert len(set(held)) == len(held)
            for t in held:
                counts[t] += 1
                assert mask[g, t]
                assert e in top[g, t]
        assert np.all(counts <= top_k)
        np.testing.assert_array_equal(counts, kept[g].sum(-1))
    # A choice is dropped only when its expert is full.
    for g in range(groups):
        for e in range(experts):
            chosen = mask[g] & np.any(top[g] == e, axis=-1)
            held = slot_mask[g, e].sum()
            assert held == min(capacity, chosen.sum())


@given(routing_problems(), st.booleans())
def test_sorted_routing_keeps_the_same_choices_as_slots(problem, dropless):
    probs, top_k, capacity, mask, prioritized = problem
    capacity = None if dropless else capacity
    slots = routing.tokens_choose_routing(
        probs, top_k, capacity or probs.shape[1], mask, prioritized
    )
    decision = routing.sorted_routing(probs, top_k, capacity, mask, prioritized)
    kept = np.asarray(decision.kept)
    np.testing.assert_array_equal(kept, slots.kept)
    np.testing.assert_allclose(decision.choice_weight, slots.choice_weight)
    if dropless:  # every valid choice, no more
        np.testing.assert_array_equal(kept, np.repeat(mask[..., None], top_k, -1))
    # Rows: one per kept choice, sorted by expert, each pointing back at the
    # choice that points at it; dropped choices point past the end.
    sizes = np.asarray(decision.expert_sizes)
    num_rows = kept.sum()
    assert sizes.sum() == num_rows == len(decision.sorted_token)
    row_expert = np.repeat(np.arange(probs.shape[2]), sizes)
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]  # [G, T, k]
    choice_row = np.asarray(decision.choice_row)
    sorted_token = np.asarray(decision.sorted_token)
    tokens = probs.shape[1]
    if capacity is not None:  # per group and expert
        pairs = np.stack([sorted_token // tokens, row_expert], axis=-1)
        _, counts = np.unique(pairs, axis=0, return_counts=True)
        assert np.all(counts <= capacity)
    for g, t, j in zip(*np.nonzero(kept), strict=True):
        row = choice_row[g, t, j]
        assert sorted_token[row] == g * tokens + t
        assert row_expert[row] == top[g, t, j]
        assert decision.sorted_weight[row] == probs[g, t, top[g, t, j]]
    assert np.all(choice_row[~kept] == num_rows)


def test_sorted_routing_keeps_sequence_order_within_an_expert():
    probs = np.tile(np.array([0.7, 0.3], np.float32), (2, 3, 1))  # all to 0
    decision = routing.sorted_routing(probs, 1, None, np.ones((2, 3), bool), False)
    np.testing.assert_array_equal(decision.expert_sizes, [6, 0])
    np.testing.assert_array_equal(decision.sorted_token, [0, 1, 2, 3, 4, 5])
