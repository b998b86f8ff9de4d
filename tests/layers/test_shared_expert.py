import keras
import numpy as np
import pytest

from tests.layers.layer_checks import (
    check_config_round_trip,
    check_fit_lowers_loss,
    check_save_and_reload,
    random_inputs,
)
from tf_switch import SwitchFFN
from tf_switch.layers.shared_expert import SharedExpert
from tf_switch.options import SwitchOptions


def _relu_ffn(x, wi, wo):
    return np.maximum(x @ wi, 0) @ wo


def test_shared_expert_is_a_dense_ffn_on_every_token():
    shared = SharedExpert(6)
    x = random_inputs((2, 5, 4))
    y = np.asarray(shared(x))
    expected = _relu_ffn(x, shared.ffn.wi[0].numpy()[0], shared.ffn.wo.numpy()[0])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_gate_scales_each_token_by_a_sigmoid():
    # A zero gate kernel: sigmoid(0) = 1/2 on every token.
    shared = SharedExpert(6, gated=True)
    x = random_inputs((2, 5, 4))
    shared.build(x.shape)
    ungated = SharedExpert(6)
    ungated.build(x.shape)
    ungated.ffn.set_weights(shared.ffn.get_weights())
    shared.gate_kernel.assign(np.zeros((4, 1), np.float32))
    np.testing.assert_allclose(
        np.asarray(shared(x)), 0.5 * np.asarray(ungated(x)), rtol=1e-6
    )
    # A gate that tells tokens apart: x[..., 0] * 100 -> 0 or 1.
    shared.gate_kernel.assign(np.array([[100.0], [0], [0], [0]], np.float32))
    y = np.asarray(shared(x))
    off = x[..., 0] < -0.2
    assert np.all(np.abs(y[off]) < 1e-6)


def test_padding_outputs_zero():
    shared = SharedExpert(6)
    x = random_inputs((1, 4, 4), seed=3)
    mask = np.array([[True, True, False, False]])
    y = np.asarray(shared(x, padding_mask=mask))
    assert np.all(y[0, 2:] == 0.0) and np.any(y[0, :2] != 0.0)


def test_switch_ffn_adds_the_shared_expert_to_the_routed_output():
    x = random_inputs((2, 8, 4))
    plain = SwitchFFN(4, 6, capacity_factor=None)
    with_shared = SwitchFFN(4, 6, capacity_factor=None, shared_expert_dim=5)
    for layer in (plain, with_shared):
        layer.build(x.shape)
    with_shared.router.set_weights(plain.router.get_weights())
    with_shared.experts.set_weights(plain.experts.get_weights())
    shared = with_shared.shared_expert.ffn
    expected = np.asarray(plain(x)) + _relu_ffn(
        x, shared.wi[0].numpy()[0], shared.wo.numpy()[0]
    )
    np.testing.assert_allclose(np.asarray(with_shared(x)), expected, atol=1e-6)


def test_switch_ffn_with_shared_expert_saves_reloads_and_trains(tmp_path):
    inputs = keras.Input((8, 4))
    ffn = SwitchFFN(
        4,
        6,
        options=SwitchOptions(shared_expert_dim=5, shared_expert_gate=True),
    )
    model = keras.Model(inputs, ffn(inputs))
    check_config_round_trip(ffn)
    assert ffn.get_config()["shared_expert_dim"] == 5
    x = random_inputs((4, 8, 4))
    reloaded = check_save_and_reload(model, x, tmp_path)
    assert reloaded.layers[-1].shared_expert.gated
    history = check_fit_lowers_loss(model, x, random_inputs((4, 8, 4), seed=1))
    assert len(history.history["loss"]) == 8


def test_shared_expert_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    ffn = SwitchFFN(4, 6, shared_expert_dim=5, shared_expert_gate=True)
    y = ffn(random_inputs((2, 8, 4)), training=True)
    assert y.dtype == "bfloat16"
    assert ffn.shared_expert.gate_kernel.dtype == "float32"


def test_options_validate_the_shared_expert():
    with pytest.raises(ValueError, match="shared_expert_dim=0"):
        SwitchOptions(shared_expert_dim=0)
    with pytest.raises(ValueError, match="Set shared_expert_dim"):
        SwitchOptions(shared_expert_gate=True)


def test_serving_copy_of_a_model_with_a_shared_expert_predicts_the_same():
    from tests.lifecycle.tiny_models import switch_model, token_ids
    from tf_switch.export import serving_model

    model = switch_model(
        switch_options={
            "group_size": 24,
            "eval_capacity_factor": None,
            "shared_expert_dim": 8,
            "shared_expert_gate": True,
        }
    )
    copy = serving_model(model)
    assert copy.config.switch_options.shared_expert_dim == 8
    ids = token_ids()
    np.testing.assert_allclose(np.asarray(copy(ids)), np.asarray(model(ids)), atol=1e-5)
