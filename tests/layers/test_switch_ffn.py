import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tests.layers.layer_checks import (
    check_config_round_trip,
    check_fit_lowers_loss,
    check_save_and_reload,
    random_inputs,
)
from tf_switch import SwitchFFN


def _built(ffn, shape):
    ffn.build(shape)
    return ffn


def _expert_outputs(ffn, tokens, expert):
    """Expert `expert` of `ffn` applied to `tokens` [M, d], in NumPy."""
    wi = ffn.experts.wi[0].numpy()[expert]
    wo = ffn.experts.wo.numpy()[expert]
    return np.maximum(tokens @ wi, 0) @ wo


def test_ones_kernel_sends_everything_to_expert_0_and_drops_past_capacity():
    # All logits equal: every token's argmax is expert 0 (lowest index), each
    # with probability 1/4. Capacity ceil(1.0 * 8 / 4) = 2 keeps tokens 0, 1.
    ffn = _built(
        SwitchFFN(4, 6, capacity_factor=1.0, min_capacity=1, router_z_loss_weight=0),
        (None, 8, 4),
    )
    ffn.router.kernel.assign(np.ones((4, 4), np.float32))
    x = random_inputs((1, 8, 4))
    y, stats = ffn(x, training=True, return_router_stats=True)
    y = np.asarray(y)
    np.testing.assert_allclose(
        y[0, :2], 0.25 * _expert_outputs(ffn, x[0, :2], 0), rtol=1e-5
    )
    assert np.all(y[0, 2:] == 0.0)
    assert float(stats["dropped_fraction"]) == pytest.approx(6 / 8)
    np.testing.assert_array_equal(stats["token_expert"][0], [0, 0] + [-1] * 6)
    np.testing.assert_allclose(stats["token_probability"], np.full((1, 8), 0.25))
    np.testing.assert_allclose(stats["expert_fraction"], [1, 0, 0, 0])
    # N * sum f_i P_i = 4 * (1 * 1/4) = 1, times alpha = 0.01.
    assert float(stats["load_balance_loss"]) == pytest.approx(1.0)
    assert [float(v) for v in ffn.losses] == pytest.approx([0.01])


def test_dropped_tokens_output_zero_not_gated_input():
    # Hugging Face switch_transformers regression: dropped tokens came out as
    # p * x instead of 0, adding to the residual twice.
    # 64 hidden units: a kept token is all-zero only if every ReLU is off.
    ffn = _built(SwitchFFN(2, 64, capacity_factor=0.25, min_capacity=1), (None, 8, 4))
    ffn.router.kernel.assign(np.ones((4, 2), np.float32))
    y = np.asarray(ffn(random_inputs((1, 8, 4)), training=True))
    assert np.all(y[0, 1:] == 0.0)
    assert np.any(y[0, 0] != 0.0)


@pytest.mark.parametrize("dispatch", ["gather", "einsum"])
def test_jitter_never_reaches_the_experts(dispatch):
    # Hugging Face regression: jitter was applied to the hidden states that
    # the experts then consumed. With a zero router kernel the noisy logits
    # are still all 0, so gates and routing are unchanged, and outputs must be
    # bit-identical with and without jitter.
    def run(jitter):
        ffn = _built(
            SwitchFFN(
                2,
                8,
                dispatch=dispatch,
                jitter_noise=jitter,
                capacity_factor=None,
                seed=1,
                kernel_initializer=keras.initializers.Constant(0.1),
            ),
            (None, 8, 4),
        )
        ffn.router.kernel.assign(np.zeros((4, 2), np.float32))
        return np.asarray(ffn(random_inputs((2, 8, 4)), training=True))

    np.testing.assert_array_equal(run(0.5), run(0.0))


def test_balance_loss_is_computed_per_layer():
    # Hugging Face regression: router logits of all layers were concatenated
    # into one load-balancing loss. Each layer must add its own.
    inputs = keras.Input((8, 4))
    first = SwitchFFN(4, 8, name="first")
    second = SwitchFFN(4, 8, name="second", router_z_loss_weight=0.0)
    hidden, first_stats = first(inputs, return_router_stats=True)
    outputs, second_stats = second(hidden, return_router_stats=True)
    model = keras.Model(inputs, [outputs, first_stats, second_stats])
    _, first_stats, second_stats = model(random_inputs())
    expected = [
        0.01 * float(first_stats["load_balance_loss"]),
        0.001 * float(first_stats["router_z_loss"]),
        0.01 * float(second_stats["load_balance_loss"]),
    ]
    assert [float(v) for v in model.losses] == pytest.approx(expected)


def test_top2_dropless_output_is_sum_of_two_gated_experts():
    ffn = _built(SwitchFFN(3, 5, top_k=2, capacity_factor=None), (None, 6, 4))
    x = random_inputs((1, 6, 4))
    y, _ = ffn(x, training=True, return_router_stats=True)
    probs = tf.nn.softmax(x[0] @ ffn.router.kernel.numpy()).numpy()
    expected = np.zeros((6, 4), np.float32)
    for t in range(6):
        for e in np.argsort(-probs[t])[:2]:
            expected[t] += probs[t, e] * _expert_outputs(ffn, x[0, t : t + 1], e)[0]
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-6)


def test_padding_mask_excludes_padding_from_routing_and_statistics():
    x = random_inputs((1, 8, 4))
    mask = np.array([[True, True, True, False, True, False, False, True]])
    ffn = _built(SwitchFFN(4, 8, capacity_factor=None), (None, 8, 4))
    y, stats = ffn(x, padding_mask=mask, return_router_stats=True)
    assert np.all(np.asarray(y)[~mask] == 0.0)
    valid = x[mask][None]  # [1, 5, 4]
    reference = SwitchFFN(4, 8, capacity_factor=None, group_size=5)
    reference.build((None, 5, 4))
    reference.set_weights(ffn.get_weights())
    ref_y, ref_stats = reference(valid, return_router_stats=True)
    np.testing.assert_allclose(np.asarray(y)[mask], ref_y[0], rtol=1e-5, atol=1e-6)
    for key in ("load_balance_loss", "router_z_loss", "expert_fraction"):
        np.testing.assert_allclose(stats[key], ref_stats[key], rtol=1e-5)


def test_group_size_that_does_not_divide_pads_the_last_group():
    x = random_inputs((1, 10, 4))
    ffn = _built(SwitchFFN(2, 8, group_size=8, capacity_factor=None), (None, 10, 4))
    y = np.asarray(ffn(x))
    assert y.shape == (1, 10, 4)
    # The last group holds tokens 8-9 and six padding tokens; it routes the
    # two real tokens exactly as a group of just them would.
    alone = SwitchFFN(2, 8, group_size=2, capacity_factor=None)
    alone.build((None, 2, 4))
    alone.set_weights(ffn.get_weights())
    np.testing.assert_allclose(y[:, 8:], alone(x[:, 8:]), rtol=1e-6)


def test_group_size_none_needs_sequences():
    ffn = SwitchFFN(2, 8)
    with pytest.raises(ValueError, match="group_size"):
        ffn(np.ones((5, 4), np.float32))


def test_flat_tokens_with_group_size():
    ffn = SwitchFFN(2, 8, group_size=4, capacity_factor=None)
    y, stats = ffn(np.ones((6, 4), np.float32), return_router_stats=True)
    assert y.shape == (6, 4)
    assert stats["token_expert"].shape == (6,)  # the padded group cut off
    assert np.all(np.asarray(stats["token_expert"]) >= 0)


@st.composite
def ffn_configs(draw):
    return {
        "num_experts": draw(st.integers(2, 5)),
        "top_k": draw(st.integers(1, 2)),
        "capacity_factor": draw(st.sampled_from([0.5, 1.0, 1.25, None])),
        "min_capacity": 1,
        "batch_prioritized_routing": draw(st.booleans()),
        "group_size": draw(st.sampled_from([None, 4, 6])),
        "seed": draw(st.integers(0, 100)),
    }


def _outputs_and_gradients(ffn, x, mask=None):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ffn(x, padding_mask=mask, training=True)
        loss = tf.reduce_sum(y * tf.cos(tf.range(y.shape[-1], dtype=tf.float32)))
    grads = tape.gradient(loss, [x] + ffn.trainable_weights)
    return y, grads


def _assert_dispatch_methods_agree(x, methods=("gather", "einsum"), **config):
    """The dispatch methods give the same outputs and gradients."""
    gather = _built(SwitchFFN(intermediate_dim=8, dispatch="gather", **config), x.shape)
    y_g, grads_g = _outputs_and_gradients(gather, x)
    for method in methods[1:]:
        other = _built(
            SwitchFFN(intermediate_dim=8, dispatch=method, **config), x.shape
        )
        other.set_weights(gather.get_weights())
        y_e, grads_e = _outputs_and_gradients(other, x)
        np.testing.assert_allclose(y_g, y_e, rtol=1e-5, atol=1e-6)
        for g, e in zip(grads_g, grads_e, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


@given(ffn_configs())
def test_all_dispatch_methods_agree_in_outputs_and_gradients(config):
    _assert_dispatch_methods_agree(
        random_inputs((2, 6, 4), seed=config["seed"]),
        methods=("gather", "einsum", "sorted"),
        **config,
    )


def test_expert_choice_einsum_and_gather_agree():
    _assert_dispatch_methods_agree(
        random_inputs((2, 6, 4)),
        num_experts=3,
        routing="experts_choose",
        capacity_factor=1.5,
        min_capacity=1,
    )


@given(ffn_configs(), st.integers(0, 2))
def test_a_groups_output_does_not_depend_on_other_groups(config, changed_group):
    config["group_size"] = None  # one group per sequence
    x = random_inputs((3, 6, 4), seed=config["seed"])
    ffn = _built(SwitchFFN(intermediate_dim=8, **config), x.shape)
    y = np.asarray(ffn(x, training=True))
    x2 = x.copy()
    x2[changed_group] = random_inputs((6, 4), seed=config["seed"] + 1)
    y2 = np.asarray(ffn(x2, training=True))
    for g in range(3):
        if g == changed_group:
            continue
        if config["capacity_factor"] is None:
            # Dropless dispatches sorted: each expert's matmul has as many
            # rows as the whole batch routes to it, and the row count can
            # change the kernel's rounding (not the routing) in the last bit.
            np.testing.assert_allclose(y[g], y2[g], rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(y[g], y2[g])


@given(ffn_configs())
def test_dropped_tokens_output_exactly_zero(config):
    x = random_inputs((2, 6, 4), seed=config["seed"])
    ffn = _built(SwitchFFN(intermediate_dim=8, **config), x.shape)
    y, stats = ffn(x, training=True, return_router_stats=True)
    zero_rows = np.all(np.asarray(y) == 0.0, axis=-1)
    dropped_fraction = float(stats["dropped_fraction"])
    # A token is all zeros only when every one of its k choices was dropped,
    # so zero rows are at most the dropped share of choices; exactly it at k=1.
    assert zero_rows.mean() <= dropped_fraction + 1e-6
    if config["top_k"] == 1:
        assert zero_rows.mean() == pytest.approx(dropped_fraction)
    if config["capacity_factor"] is None:
        assert dropped_fraction == 0.0


@pytest.mark.parametrize("dispatch", ["gather", "einsum"])
def test_jit_compile_matches_eager(dispatch):
    ffn = _built(SwitchFFN(4, 8, dispatch=dispatch, group_size=8), (2, 8, 4))
    x = random_inputs()
    eager_y, eager_grads = _outputs_and_gradients(ffn, x)
    compiled = tf.function(lambda v: _outputs_and_gradients(ffn, v), jit_compile=True)
    xla_y, xla_grads = compiled(tf.constant(x))
    np.testing.assert_allclose(xla_y, eager_y, rtol=1e-5, atol=1e-6)
    for a, b in zip(xla_grads, eager_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mixed_bfloat16_keeps_router_float32_and_experts_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    ffn = SwitchFFN(4, 8)
    y, stats = ffn(random_inputs(), return_router_stats=True)
    assert y.dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in ffn.weights)
    assert ffn.experts.compute_dtype == "bfloat16"
    assert ffn.router.kernel.dtype == "float32"
    assert stats["load_balance_loss"].dtype == "float32"
    # The bf16 layer agrees with a float32 copy to bf16 precision.
    keras.mixed_precision.set_global_policy("float32")
    reference = _built(SwitchFFN(4, 8), (None, 8, 4))
    reference.set_weights(ffn.get_weights())
    np.testing.assert_allclose(
        np.asarray(y, np.float32), reference(random_inputs()), rtol=0.05, atol=0.02
    )


def test_config_round_trip_and_reload(tmp_path):
    ffn = SwitchFFN(
        4,
        8,
        activation="gated-gelu",
        top_k=2,
        capacity_factor=1.5,
        group_size=8,
        dispatch="einsum",
        jitter_noise=0.01,
    )
    check_config_round_trip(ffn)
    inputs = keras.Input((8, 4))
    model = keras.Model(inputs, ffn(inputs))
    reloaded = check_save_and_reload(model, random_inputs(), tmp_path)
    assert reloaded.layers[1].router.kernel.dtype == "float32"


def test_fit_lowers_loss_and_logs_routing_metrics():
    inputs = keras.Input((8, 4))
    ffn = SwitchFFN(4, 16, name="moe")
    model = keras.Model(inputs, inputs + ffn(inputs))
    x = random_inputs((16, 8, 4))
    history = check_fit_lowers_loss(model, x, np.roll(x, 1, axis=-1))
    for key in (
        "load_balance_loss",
        "router_z_loss",
        "dropped_fraction",
        "router_confidence",
        "expert_3_fraction",
    ):
        assert f"moe_router/{key}" in history.history


@pytest.mark.parametrize("dispatch", ["gather", "einsum"])
def test_normalized_gates_of_identical_experts_give_that_expert(dispatch):
    # Top-2, gates p1 / (p1 + p2) and p2 / (p1 + p2): with all experts the
    # same function E, every kept token's output is E(x), whatever the router.
    ffn = _built(
        SwitchFFN(
            4,
            6,
            top_k=2,
            normalize_gates=True,
            capacity_factor=None,
            dispatch=dispatch,
        ),
        (None, 8, 4),
    )
    wi, wo = ffn.experts.wi[0].numpy(), ffn.experts.wo.numpy()
    ffn.experts.wi[0].assign(np.repeat(wi[:1], 4, axis=0))
    ffn.experts.wo.assign(np.repeat(wo[:1], 4, axis=0))
    x = random_inputs((2, 8, 4))
    expected = _expert_outputs(ffn, x.reshape(-1, 4), 0).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(ffn(x)), expected, rtol=1e-5, atol=1e-6)


def test_normalized_gates_still_train_the_router():
    ffn = _built(
        SwitchFFN(4, 6, top_k=2, normalize_gates=True, capacity_factor=None),
        (None, 8, 4),
    )
    x = random_inputs((2, 8, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ffn(x, training=True) * random_inputs((2, 8, 4), 1))
    router_grad = tape.gradient(loss, ffn.router.kernel)
    assert float(tf.reduce_max(tf.abs(router_grad))) > 1e-4


def test_a_token_without_kept_choices_stays_zero_with_normalized_gates():
    # A ones kernel ties every logit: each token chooses experts 0 then 1
    # (lowest index first), each with p = 1/4. Capacity ceil(0.5 * 8 / 4) = 1:
    # first choices go first, so expert 0 takes token 0, and expert 1 takes
    # token 0's second choice. Token 0 gets (E_0 + E_1) / 2, the rest 0.
    ffn = _built(
        SwitchFFN(
            4,
            6,
            top_k=2,
            normalize_gates=True,
            capacity_factor=0.5,
            min_capacity=1,
            router_z_loss_weight=0,
        ),
        (None, 8, 4),
    )
    ffn.router.kernel.assign(np.ones((4, 4), np.float32))
    x = random_inputs((1, 8, 4))
    y = np.asarray(ffn(x, training=True))
    expected = (
        _expert_outputs(ffn, x[0, :1], 0) + _expert_outputs(ffn, x[0, :1], 1)
    ) / 2
    np.testing.assert_allclose(y[0, :1], expected, rtol=1e-5, atol=1e-8)
    assert np.all(y[0, 1:] == 0.0)
