"""SwitchFFN with sorted dispatch and dropless routing: what a user notices."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layers.layer_checks import check_fit_lowers_loss, random_inputs
from tf_switch import SwitchFFN
from tf_switch.layers.expert_ffn import ExpertFFN


def _built(ffn, shape):
    ffn.build(shape)
    return ffn


def _rows_seen_by_experts(monkeypatch):
    """Records the row count of every sorted expert call."""
    rows = []
    original = ExpertFFN.apply_experts_sorted

    def spy(self, inputs, expert_sizes, training):
        rows.append(int(tf.shape(inputs)[0]))
        return original(self, inputs, expert_sizes, training)

    monkeypatch.setattr(ExpertFFN, "apply_experts_sorted", spy)
    return rows


@pytest.mark.parametrize("top_k", [1, 2])
def test_dropless_experts_compute_exactly_the_routed_tokens(monkeypatch, top_k):
    # Not T slots per expert (N times the FLOPs): k rows per valid token.
    rows = _rows_seen_by_experts(monkeypatch)
    ffn = _built(SwitchFFN(4, 8, top_k=top_k, capacity_factor=None), (2, 8, 4))
    mask = np.ones((2, 8), bool)
    mask[1, 5:] = False  # 3 padding tokens
    ffn(random_inputs(), padding_mask=mask, training=True)
    assert rows == [top_k * 13]


def test_dropless_equals_static_routing_with_room_for_every_token():
    # capacity_factor=N gives C = T: the static path cannot drop either.
    x = random_inputs((2, 8, 4))
    dropless = _built(SwitchFFN(4, 8, top_k=2, capacity_factor=None), x.shape)
    static = _built(SwitchFFN(4, 8, top_k=2, capacity_factor=4.0), x.shape)
    static.set_weights(dropless.get_weights())
    np.testing.assert_allclose(
        dropless(x, training=True), static(x, training=True), rtol=1e-5, atol=1e-6
    )


def test_capacity_routing_through_sorted_dispatch_drops_the_same_tokens():
    x = random_inputs((2, 8, 4))
    options = {"capacity_factor": 0.5, "min_capacity": 1}  # C = 1 of 8 tokens
    sorted_ffn = _built(SwitchFFN(4, 8, dispatch="sorted", **options), x.shape)
    gather = _built(SwitchFFN(4, 8, **options), x.shape)
    gather.set_weights(sorted_ffn.get_weights())
    y_sorted, stats = sorted_ffn(x, training=True, return_router_stats=True)
    np.testing.assert_allclose(y_sorted, gather(x, training=True), atol=1e-6)
    assert float(stats["dropped_fraction"]) > 0


def test_dropless_evaluation_uses_sorted_dispatch_whatever_the_setting():
    ffn = SwitchFFN(4, 8, dispatch="einsum", eval_capacity_factor=None)
    assert ffn.dispatch_method(training=False) == "sorted"
    assert ffn.dispatch_method(training=True) == "einsum"


def test_xla_refuses_dropless_with_a_message_saying_what_to_do():
    ffn = _built(SwitchFFN(4, 8, capacity_factor=None), (2, 8, 4))
    assert not ffn.supports_jit  # Keras' jit_compile="auto" stays off
    step = tf.function(lambda x: ffn(x, training=True), jit_compile=True)
    with pytest.raises(ValueError, match="capacity_factor=None .* XLA"):
        step(tf.constant(random_inputs()))
    sorted_ffn = _built(SwitchFFN(4, 8, dispatch="sorted"), (2, 8, 4))
    step = tf.function(lambda x: sorted_ffn(x, training=True), jit_compile=True)
    with pytest.raises(ValueError, match="dispatch='sorted' .* dispatch='einsum'"):
        step(tf.constant(random_inputs()))


def test_static_capacity_still_compiles_under_xla():
    ffn = _built(SwitchFFN(4, 8, eval_capacity_factor=2.0), (2, 8, 4))
    assert ffn.supports_jit
    step = tf.function(lambda x: ffn(x, training=True), jit_compile=True)
    np.testing.assert_allclose(
        step(tf.constant(random_inputs())),
        ffn(random_inputs(), training=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mixed_bfloat16_dropless_keeps_router_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    ffn = SwitchFFN(4, 8, top_k=2, capacity_factor=None, use_bias=True)
    y, stats = ffn(random_inputs(), training=True, return_router_stats=True)
    assert y.dtype == "bfloat16"
    assert stats["load_balance_loss"].dtype == "float32"
    keras.mixed_precision.set_global_policy("float32")
    reference = _built(
        SwitchFFN(4, 8, top_k=2, capacity_factor=None, use_bias=True), (None, 8, 4)
    )
    reference.set_weights(ffn.get_weights())
    np.testing.assert_allclose(
        np.asarray(y, np.float32),
        reference(random_inputs(), training=True),
        rtol=0.05,
        atol=0.02,
    )


def test_fit_dropless_top2_with_padding_in_graph_mode():
    tokens = keras.Input((8, 4))
    mask = keras.Input((8,), dtype="bool")
    ffn = SwitchFFN(
        4, 16, top_k=2, capacity_factor=None, activation="gated-gelu", name="moe"
    )
    model = keras.Model([tokens, mask], tokens + ffn(tokens, padding_mask=mask))
    x = random_inputs((16, 8, 4))
    padding = np.ones((16, 8), bool)
    padding[:, 6:] = False
    history = check_fit_lowers_loss(model, [x, padding], np.roll(x, 1, axis=-1))
    assert history.history["moe_router/dropped_fraction"][-1] == 0.0
