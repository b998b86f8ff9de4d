import keras
import numpy as np
import pytest

from tests.layers.layer_checks import (
    check_config_round_trip,
    check_save_and_reload,
    random_inputs,
)
from tf_switch import SwitchRouter


def test_routing_is_float32_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    router = SwitchRouter(num_experts=4)
    output = router(keras.ops.cast(random_inputs(), "bfloat16"))
    assert router.kernel.dtype == "float32"
    assert router.compute_dtype == "bfloat16"
    for value in (output.router_logits, output.router_probs):
        assert value.dtype == "float32"
    assert output.decision.slot_weight.dtype == "float32"
    # The kernel is used in float32, not rounded to bfloat16.
    expected = keras.ops.cast(random_inputs(), "bfloat16").numpy().astype(np.float32)
    expected = expected @ router.kernel.numpy()
    np.testing.assert_allclose(output.router_logits, expected, rtol=1e-5)


def test_capacity_differs_between_training_and_evaluation():
    router = SwitchRouter(num_experts=4, capacity_factor=1.0, eval_capacity_factor=2.0)
    x = random_inputs((1, 16, 4))
    assert router(x, training=True).decision.slot_token.shape[-1] == 4
    assert router(x, training=False).decision.slot_token.shape[-1] == 8


def test_jitter_only_in_training():
    router = SwitchRouter(num_experts=4, jitter_noise=0.5, seed=3)
    x = random_inputs()
    eval_logits = [router(x, training=False).router_logits for _ in range(2)]
    np.testing.assert_array_equal(eval_logits[0], eval_logits[1])
    np.testing.assert_allclose(eval_logits[0], x @ router.kernel.numpy(), rtol=1e-5)
    train_logits = router(x, training=True).router_logits
    assert not np.allclose(train_logits, eval_logits[0])
    # Multiplicative noise in [1 - eps, 1 + eps] on each input feature.
    bound = np.abs(x) @ np.abs(router.kernel.numpy()) * 0.5
    assert np.all(np.abs(train_logits - eval_logits[0]) <= bound + 1e-5)


def test_losses_are_added_with_their_own_weights():
    router = SwitchRouter(
        num_experts=4, load_balance_loss_weight=0.5, router_z_loss_weight=2.0
    )
    decision = router(random_inputs())
    stats = decision.stats
    added = [float(loss) for loss in router.losses]
    assert added == pytest.approx(
        [0.5 * float(stats["load_balance_loss"]), 2.0 * float(stats["router_z_loss"])]
    )


def test_z_loss_is_not_scaled_by_the_balance_weight():
    # Flaxformer/HF regression: z-loss multiplied by the balance coefficient.
    router = SwitchRouter(
        num_experts=4, load_balance_loss_weight=0.0, router_z_loss_weight=1.0
    )
    decision = router(random_inputs())
    logits = np.asarray(decision.router_logits, np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    assert len(router.losses) == 1
    assert float(router.losses[0]) == pytest.approx(np.mean(log_z**2), rel=1e-5)


def test_expert_choice_routes_without_balance_loss():
    router = SwitchRouter(num_experts=4, routing="experts_choose", capacity_factor=1.0)
    decision = router(random_inputs(), training=True)
    assert decision.decision.slot_mask.numpy().all()  # every expert full
    assert len(router.losses) == 1  # the z-loss only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"routing": "experts_choose", "causal": True}, "later tokens"),
        ({"batch_prioritized_routing": True, "causal": True}, "leaks the future"),
        ({"top_k": 5}, "top_k"),
        ({"num_experts": 1}, "num_experts"),
        ({"routing": "experts_choose", "capacity_factor": None}, "capacity factor"),
        ({"capacity_factor": 0}, "capacity_factor"),
        ({"routing": "expert_choice"}, "routing"),
        ({"jitter_noise": 1.5}, "jitter_noise"),
        ({"load_balance_loss_weight": -1.0}, "load_balance_loss_weight"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    kwargs = {"num_experts": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        SwitchRouter(**kwargs)


def test_metrics_accumulate_token_weighted_means():
    router = SwitchRouter(num_experts=2, per_expert_metrics=True, name="r")
    x = random_inputs((1, 8, 4))
    stats = router(x).stats
    result = {k: float(v) for k, v in router.routing_metrics.result().items()}
    assert result["r/load_balance_loss"] == pytest.approx(
        float(stats["load_balance_loss"])
    )
    fractions = [result["r/expert_0_fraction"], result["r/expert_1_fraction"]]
    assert sum(fractions) == pytest.approx(1.0)
    assert result["r/max_load"] == pytest.approx(2 * max(fractions))
    router.routing_metrics.reset_state()
    assert float(router.routing_metrics.result()["r/router_confidence"]) == 0.0


def test_config_round_trip():
    check_config_round_trip(
        SwitchRouter(
            num_experts=8,
            top_k=2,
            capacity_factor=None,
            jitter_noise=0.01,
            batch_prioritized_routing=True,
        )
    )


def test_reload_from_keras_file(tmp_path):
    inputs = keras.Input((8, 4))
    router = SwitchRouter(num_experts=4, top_k=2, jitter_noise=0.1)
    model = keras.Model(inputs, router(inputs).router_probs)
    check_save_and_reload(model, random_inputs(), tmp_path)
