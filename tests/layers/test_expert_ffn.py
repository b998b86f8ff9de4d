import keras
import numpy as np
import pytest

from tests.layers.layer_checks import check_config_round_trip, check_save_and_reload
from tf_switch import ExpertFFN


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gated-gelu"])
def test_each_expert_applies_its_own_weights(activation):
    experts = ExpertFFN(num_experts=3, intermediate_dim=5, activation=activation)
    x = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
    y = np.asarray(experts(x))
    wo = experts.wo.numpy()
    for n in range(3):
        hidden = x[n] @ experts.wi[0].numpy()[n]
        hidden = np.maximum(hidden, 0) if activation == "relu" else _gelu(hidden)
        if activation == "gated-gelu":
            hidden = hidden * (x[n] @ experts.wi[1].numpy()[n])
        np.testing.assert_allclose(y[n], hidden @ wo[n], rtol=1e-4, atol=1e-6)


def test_initial_std_uses_each_experts_fan_in():
    experts = ExpertFFN(num_experts=16, intermediate_dim=256)
    experts.build((16, None, 64))
    assert experts.wi[0].numpy().std() == pytest.approx(np.sqrt(0.1 / 64), rel=0.02)
    assert experts.wo.numpy().std() == pytest.approx(np.sqrt(0.1 / 256), rel=0.02)


def test_expert_dropout_only_in_training():
    experts = ExpertFFN(num_experts=2, intermediate_dim=64, expert_dropout=0.5)
    x = np.ones((2, 3, 4), np.float32)
    np.testing.assert_array_equal(experts(x), experts(x))
    assert not np.allclose(experts(x, training=True), experts(x))


def test_biases_are_per_expert():
    experts = ExpertFFN(num_experts=2, intermediate_dim=3, use_bias=True)
    experts.build((2, None, 4))
    experts.bo.assign(np.array([[[1.0] * 4], [[2.0] * 4]], np.float32))
    y = np.asarray(experts(np.zeros((2, 1, 4), np.float32)))
    np.testing.assert_array_equal(y[:, 0, 0], [1.0, 2.0])


def test_invalid_activation_is_refused():
    with pytest.raises(ValueError, match="gated-gelu"):
        ExpertFFN(num_experts=2, intermediate_dim=3, activation="swish")


def test_config_round_trip_and_reload(tmp_path):
    layer = ExpertFFN(num_experts=2, intermediate_dim=8, activation="gated-gelu")
    check_config_round_trip(layer)
    inputs = keras.Input((3, 4), batch_size=2)
    model = keras.Model(inputs, layer(inputs))
    check_save_and_reload(model, np.ones((2, 3, 4), np.float32), tmp_path)
