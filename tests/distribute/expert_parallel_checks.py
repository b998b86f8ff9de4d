"""The per-call checks of `expert_parallel_worker`: one layer call (float32
and `mixed_bfloat16`), a replicated serving copy, and the error cases.

Each check takes a `MirroredStrategy` over D logical CPUs and returns
JSON-ready numbers for `tests/distribute/test_expert_parallel.py` to assert
on; `max_error` and `switch_ffn` are shared with `expert_parallel_fit`.
"""

import numpy as np
import tensorflow as tf


def max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))


def switch_ffn(expert_parallel, num_experts=8, dispatch="gather", shared=False):
    from tf_switch import SwitchFFN

    shared_expert = {"shared_expert_dim": 6, "shared_expert_gate": True}
    return SwitchFFN(
        **(shared_expert if shared else {}),
        num_experts=num_experts,
        dispatch=dispatch,
        intermediate_dim=12,
        activation="gated-gelu",
        use_bias=True,
        capacity_factor=1.5,
        expert_parallel=expert_parallel,
        name="ffn",
    )


def check_layer(strategy, dispatch="gather", shared=False):
    """Outputs and gradients of one call against the replicated layer; with
    `shared`, the layer has a gated shared expert, which stays data-parallel."""
    import keras

    from tf_switch.distribute.expert_parallel import (
        is_expert_shard,
        logical_weights,
        set_logical_weights,
    )

    num_replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    # Two sequences per replica; each sequence is its own routing group, so
    # splitting the batch over replicas leaves the routing unchanged.
    inputs = rng.normal(size=(2 * num_replicas, 6, 8)).astype(np.float32)
    upstream = rng.normal(size=inputs.shape).astype(np.float32)

    keras.utils.set_random_seed(1)
    plain = switch_ffn(expert_parallel=False, dispatch=dispatch, shared=shared)
    plain.build(inputs.shape)
    with tf.GradientTape() as tape:
        expected = plain(inputs, training=True)
        loss = tf.reduce_sum(expected * upstream)
    expected_grads = tape.gradient(loss, plain.trainable_variables)

    with strategy.scope():
        layer = switch_ffn(expert_parallel=True, dispatch=dispatch, shared=shared)
        layer.build(inputs.shape)
    set_logical_weights(layer, plain.get_weights())

    dataset = tf.data.Dataset.from_tensor_slices((inputs, upstream)).batch(len(inputs))
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(batch):
        def replica_step(x, u):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
                replica_loss = tf.reduce_sum(y * u)
            return y, tape.gradient(replica_loss, layer.trainable_variables)

        return strategy.run(replica_step, args=batch)

    outputs, grads = step(batch)
    actual = np.concatenate(
        [t.numpy() for t in strategy.experimental_local_results(outputs)]
    )
    grad_errors, grad_scales = {}, {}
    for variable, grad, want in zip(
        layer.trainable_variables, grads, expected_grads, strict=True
    ):
        parts = [g.numpy() for g in strategy.experimental_local_results(grad)]
        if is_expert_shard(variable):
            got = np.concatenate(parts)  # each replica: its experts, complete
        else:
            got = np.sum(parts, axis=0)  # data-parallel: sum over replicas
        grad_errors[variable.path] = max_error(got, want)
        grad_scales[variable.path] = float(np.abs(want).max())
    with strategy.scope():  # cross-replica context: shards are concatenated
        cross_replica = layer(inputs, training=True)
    return {
        "output_scale": float(np.abs(expected).max()),
        "output_error": max_error(actual, expected),
        "grad_errors": grad_errors,
        "grad_scales": grad_scales,
        "cross_replica_error": max_error(cross_replica, expected),
        "shapes": {v.path: list(v.shape) for v in layer.weights},
        "logical_error": max(
            max_error(a, b)
            for a, b in zip(logical_weights(layer), plain.get_weights(), strict=True)
        ),
    }


def check_bfloat16(strategy):
    """One call under `mixed_bfloat16` (float32 weights, bfloat16 tokens)."""
    import keras

    from tf_switch.distribute.expert_parallel import set_logical_weights

    inputs = np.random.default_rng(0).normal(
        size=(2 * strategy.num_replicas_in_sync, 6, 8)
    )
    dataset = tf.data.Dataset.from_tensors(inputs.astype(np.float32))
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        reference = switch_ffn(expert_parallel=False)
        with strategy.scope():
            layer = switch_ffn(expert_parallel=True)
        for built in (reference, layer):
            built.build(inputs.shape)
        set_logical_weights(layer, reference.get_weights())
        expected = reference(inputs, training=True)
        outputs = strategy.run(
            tf.function(lambda x: layer(x, training=True)), args=(batch,)
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    actual = np.concatenate(strategy.experimental_local_results(outputs))
    expected = tf.cast(expected, tf.float32)
    return {
        "bfloat16_scale": float(np.abs(expected).max()),
        "bfloat16_error": max_error(tf.cast(actual, tf.float32), expected),
    }


def check_serving_copy(strategy):
    """The recipe for `tf_switch.export.serving_model`: a replicated copy of
    an expert-parallel language model, built outside the strategy, takes
    `logical_weights` (not `get_weights`, whose expert arrays are shards)."""
    from tf_switch.distribute.expert_parallel import logical_weights
    from tf_switch.models import ModelConfig, SwitchLanguageModel

    config = ModelConfig(
        vocab_size=32,
        sequence_length=8,
        hidden_dim=16,
        intermediate_dim=24,
        num_layers=2,
        num_heads=2,
        num_experts=4,
        dropout=0.0,
        # Evaluation capacity T (4.0 * 8 / 4 = 8): nothing dropped, as in the
        # dropless serving copy.
        switch_options={
            "expert_parallel": True,
            "capacity_factor": 2.0,
            "eval_capacity_factor": 4.0,
        },
    )
    with strategy.scope():
        model = SwitchLanguageModel(config)
    copy = SwitchLanguageModel(
        config.replace(switch_options=config.switch_options.for_serving())
    )
    result = {}
    try:
        copy.set_weights(model.get_weights())
    except ValueError as error:
        result["get_weights_error"] = type(error).__name__
    copy.set_weights(logical_weights(model))
    tokens = np.random.default_rng(0).integers(
        0, 32, size=(2 * strategy.num_replicas_in_sync, 8), dtype=np.int32
    )
    expected = copy(tokens, training=False)
    predicted = model.predict(tokens, batch_size=len(tokens), verbose=0)
    result["predict_error"] = max_error(predicted, expected)
    result["expert_shapes"] = [
        list(v.shape) for v in model.weights if v.path.endswith("experts/wo")
    ]
    return result


def check_errors(strategy):
    """N not divisible by D, an unsupported strategy, and a replica that
    never joins an all-to-all (which must time out, not hang)."""
    from tf_switch.distribute.expert_parallel import ExpertExchange

    result = {}
    with strategy.scope():
        layer = switch_ffn(expert_parallel=True, num_experts=3)
        try:
            layer.build((2, 6, 8))
        except ValueError as error:
            result["divisibility_error"] = str(error)
        exchange = ExpertExchange(4, strategy, timeout_seconds=2)
    central = tf.distribute.experimental.CentralStorageStrategy(
        strategy.extended.worker_devices
    )
    with central.scope():
        try:
            switch_ffn(expert_parallel=True).build((2, 6, 8))
        except ValueError as error:
            result["strategy_error"] = str(error)

    @tf.function
    def only_first_replica_sends():
        def replica_step():
            context = tf.distribute.get_replica_context()
            if tf.get_static_value(context.replica_id_in_sync_group) == 0:
                exchange.to_experts(tf.ones([4, 3, 8]))

        strategy.run(replica_step)

    try:
        only_first_replica_sends()
    except tf.errors.DeadlineExceededError as error:
        result["timeout_error"] = type(error).__name__
    return result
