import keras
import numpy as np
import pytest

from tests.layers.layer_checks import (
    check_config_round_trip,
    check_fit_lowers_loss,
    check_save_and_reload,
    random_inputs,
)
from tf_switch import SwitchBlock


@pytest.mark.parametrize("num_experts", [None, 4])
def test_causal_block_output_does_not_see_the_future(num_experts):
    block = SwitchBlock(
        num_heads=2, intermediate_dim=32, num_experts=num_experts, causal=True
    )
    x = random_inputs((2, 8, 16))
    changed = x.copy()
    changed[:, 5:] = random_inputs((2, 3, 16), seed=1)
    for training in (False, True):
        y = np.asarray(block(x, training=training))
        y_changed = np.asarray(block(changed, training=training))
        np.testing.assert_allclose(y[:, :5], y_changed[:, :5], rtol=1e-5, atol=1e-6)
        assert not np.allclose(y[:, 5:], y_changed[:, 5:])


def test_padding_does_not_change_the_other_tokens():
    block = SwitchBlock(num_heads=2, intermediate_dim=32, num_experts=4)
    x = random_inputs((2, 8, 16))
    mask = np.ones((2, 8), bool)
    mask[:, 6:] = False
    changed = x.copy()
    changed[:, 6:] = 100.0
    y = np.asarray(block(x, padding_mask=mask))
    y_changed = np.asarray(block(changed, padding_mask=mask))
    np.testing.assert_allclose(y[:, :6], y_changed[:, :6], rtol=1e-5, atol=1e-5)


def test_dense_twin_has_the_flops_of_one_expert():
    sparse = SwitchBlock(num_heads=2, intermediate_dim=32, num_experts=8)
    dense = SwitchBlock(num_heads=2, intermediate_dim=32)
    for block in (sparse, dense):
        block.build((None, 8, 16))
    dense_ffn = sum(w.numpy().size for w in dense.ffn.weights)
    experts = sum(w.numpy().size for w in sparse.ffn.experts.weights)
    assert experts == 8 * dense_ffn  # 8x parameters, one expert per token
    y, stats = sparse(random_inputs((2, 8, 16)), return_router_stats=True)
    assert y.shape == (2, 8, 16) and "dropped_fraction" in stats
    y, stats = dense(random_inputs((2, 8, 16)), return_router_stats=True)
    assert y.shape == (2, 8, 16) and stats is None


def test_switch_options_reach_the_ffn():
    block = SwitchBlock(
        num_heads=2,
        intermediate_dim=32,
        num_experts=4,
        switch_options={"top_k": 2, "dispatch": "einsum"},
    )
    assert block.ffn.router.top_k == 2 and block.ffn.dispatch == "einsum"
    with pytest.raises(ValueError, match="dense"):
        SwitchBlock(num_heads=2, intermediate_dim=32, switch_options={"top_k": 2})


def test_hidden_size_must_divide_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        SwitchBlock(num_heads=3, intermediate_dim=32)(random_inputs((2, 8, 16)))


@pytest.mark.parametrize("num_experts", [None, 4])
def test_config_round_trip_reload_and_fit(num_experts, tmp_path):
    block = SwitchBlock(
        num_heads=2,
        intermediate_dim=32,
        num_experts=num_experts,
        causal=True,
        dropout=0.1,
        switch_options={"group_size": 16} if num_experts else None,
    )
    check_config_round_trip(block)
    inputs = keras.Input((8, 16))
    model = keras.Model(inputs, keras.layers.Dense(16)(block(inputs)))
    x = random_inputs((8, 8, 16))
    check_save_and_reload(model, x, tmp_path)
    check_fit_lowers_loss(model, x, np.roll(x, 1, axis=1))


def test_mixed_bfloat16_block():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    block = SwitchBlock(num_heads=2, intermediate_dim=32, num_experts=4)
    y, stats = block(random_inputs((2, 8, 16)), return_router_stats=True)
    assert y.dtype == "bfloat16"
    assert block.ffn.router.kernel.dtype == "float32"
    assert stats["router_z_loss"].dtype == "float32"
