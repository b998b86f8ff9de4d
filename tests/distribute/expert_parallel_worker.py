"""Expert-parallel checks that need D logical CPUs, run in fresh processes.

Logical devices must be configured before TensorFlow runs any op, and a
collective group key can be initialized once per process, so
`tests/distribute/test_expert_parallel.py` runs the checks here in fresh
subprocesses with a hard timeout:

    python -m tests.distribute.expert_parallel_worker layer,serving_copy 2

runs the named checks (comma-separated) on 2 logical CPUs; the last line of
stdout holds their results as one JSON object.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# A collective that waits longer than this fails the check (the default is
# for real training steps; a test's steps take well under a second).
TIMEOUT_SECONDS = 30


def split_cpu(num_devices):
    """D logical CPUs and a MirroredStrategy over them."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
    )
    devices = [f"/cpu:{index}" for index in range(num_devices)]
    return tf.distribute.MirroredStrategy(devices)


def _max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))


def _switch_ffn(expert_parallel, num_experts=8, dispatch="gather"):
    from tf_switch import SwitchFFN

    return SwitchFFN(
        num_experts=num_experts,
        dispatch=dispatch,
        intermediate_dim=12,
        activation="gated-gelu",
        use_bias=True,
        capacity_factor=1.5,
        expert_parallel=expert_parallel,
        name="ffn",
    )


def check_layer(strategy, dispatch="gather"):
    """Outputs and gradients of one call against the replicated layer."""
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
    plain = _switch_ffn(expert_parallel=False, dispatch=dispatch)
    plain.build(inputs.shape)
    with tf.GradientTape() as tape:
        expected = plain(inputs, training=True)
        loss = tf.reduce_sum(expected * upstream)
    expected_grads = tape.gradient(loss, plain.trainable_variables)

    with strategy.scope():
        layer = _switch_ffn(expert_parallel=True, dispatch=dispatch)
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
        grad_errors[variable.path] = _max_error(got, want)
        grad_scales[variable.path] = float(np.abs(want).max())
    with strategy.scope():  # cross-replica context: shards are concatenated
        cross_replica = layer(inputs, training=True)
    return {
        "output_scale": float(np.abs(expected).max()),
        "output_error": _max_error(actual, expected),
        "grad_errors": grad_errors,
        "grad_scales": grad_scales,
        "cross_replica_error": _max_error(cross_replica, expected),
        "shapes": {v.path: list(v.shape) for v in layer.weights},
        "logical_error": max(
            _max_error(a, b)
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
        reference = _switch_ffn(expert_parallel=False)
        with strategy.scope():
            layer = _switch_ffn(expert_parallel=True)
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
        "bfloat16_error": _max_error(tf.cast(actual, tf.float32), expected),
    }


def _tiny_model(expert_parallel):
    import keras

    inputs = keras.Input((6, 8))
    hidden = _switch_ffn(expert_parallel)(inputs)
    outputs = keras.layers.Dense(8, name="head")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _optimizer_state(optimizer):
    from tf_switch.distribute.expert_shards import gather_expert_weight, is_expert_shard

    return [
        gather_expert_weight(v) if is_expert_shard(v) else v.numpy()
        for v in optimizer.variables
    ]


def _expert_bytes(model, strategy):
    """Per-device bytes of the expert kernels and of their optimizer slots."""
    from tf_switch.distribute.expert_parallel import per_device_bytes

    experts = model.get_layer("ffn").experts
    expert_keys = {id(v.value) for v in experts.weights}
    slots = [
        slot
        for variable in experts.weights
        for slot in model.optimizer.variables
        if slot.path.startswith(f"{model.optimizer.name}/")
        and slot.name.startswith(variable.path.replace("/", "_") + "_")
    ]
    assert len(slots) == 2 * len(expert_keys), slots  # Adam: two per weight
    devices = [
        d.replace("/cpu:", "/device:CPU:") for d in strategy.extended.worker_devices
    ]
    params, slot_bytes = per_device_bytes(experts.weights), per_device_bytes(slots)
    return {
        "params": [params[d] for d in devices],
        "slots": [slot_bytes[d] for d in devices],
    }


class _StepLosses:
    """Collects `fit`'s loss after every step (Keras logs a running mean)."""

    def __init__(self):
        import keras

        self.losses = []
        self.callback = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: self.losses.append(logs["loss"])
        )


def _fit(model, inputs, targets, steps, epochs=1, callbacks=()):
    """`model.fit` on the same global batch, `steps` steps per epoch; returns
    the loss logged after each step."""
    dataset = (
        tf.data.Dataset.from_tensor_slices((inputs, targets))
        .batch(len(inputs))
        .repeat()
    )
    recorder = _StepLosses()
    model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
        callbacks=[*callbacks, recorder.callback],
    )
    return [float(loss) for loss in recorder.losses]


def check_fit(strategy, directory=None, steps=5):
    """`model.fit` with Adam: expert-parallel against replicated experts.

    With a `directory`, also saves and loads weights across the two kinds of
    model, and resumes training from a replicated checkpoint.
    """
    import keras

    from tf_switch.distribute.expert_parallel import (
        logical_weights,
        set_logical_weights,
    )

    num_replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(2 * num_replicas, 6, 8)).astype(np.float32)
    targets = rng.normal(size=inputs.shape).astype(np.float32)

    keras.utils.set_random_seed(2)
    with strategy.scope():
        replicated = _tiny_model(expert_parallel=False)
        parallel = _tiny_model(expert_parallel=True)
    set_logical_weights(parallel, replicated.get_weights())
    result = {
        "losses": {
            name: _fit(model, inputs, targets, steps)
            for name, model in (("replicated", replicated), ("parallel", parallel))
        },
        "weight_error": max(
            _max_error(a, b)
            for a, b in zip(
                logical_weights(parallel), replicated.get_weights(), strict=True
            )
        ),
        "slot_error": max(
            _max_error(a, b)
            for a, b in zip(
                _optimizer_state(parallel.optimizer),
                _optimizer_state(replicated.optimizer),
                strict=True,
            )
        ),
        "bytes": {
            "replicated": _expert_bytes(replicated, strategy),
            "parallel": _expert_bytes(parallel, strategy),
        },
    }

    if directory is not None:
        result.update(_check_save_and_load(strategy, directory, replicated, parallel))
    return result


def _check_save_and_load(strategy, directory, replicated, parallel):
    import keras

    from tf_switch.distribute.expert_parallel import logical_weights

    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(2 * strategy.num_replicas_in_sync, 6, 8))
    inputs = inputs.astype(np.float32)
    targets = rng.normal(size=inputs.shape).astype(np.float32)
    result = {}
    # Saved expert-parallel weights load into a replicated model, outside any
    # strategy, and a `.keras` file reloads there as the plain layer.
    parallel.save_weights(os.path.join(directory, "parallel.weights.h5"))
    parallel.save(os.path.join(directory, "parallel.keras"))
    plain = _tiny_model(expert_parallel=False)
    plain.optimizer.build(plain.trainable_variables)
    plain.load_weights(os.path.join(directory, "parallel.weights.h5"))
    reloaded = keras.saving.load_model(os.path.join(directory, "parallel.keras"))
    result["plain_load_error"] = max(
        _max_error(a, b)
        for a, b in zip(plain.get_weights(), logical_weights(parallel), strict=True)
    )
    result["plain_load_slot_error"] = max(
        _max_error(a, b)
        for a, b in zip(
            _optimizer_state(plain.optimizer),
            _optimizer_state(parallel.optimizer),
            strict=True,
        )
    )
    result["keras_reload_error"] = _max_error(reloaded(inputs), replicated(inputs))
    result["keras_reload_shapes"] = [list(v.shape) for v in reloaded.weights]

    # A replicated run's BackupAndRestore backup (weights and Adam state)
    # restores into a fresh expert-parallel model, which then trains on in
    # lock step with the replicated one.
    backup = os.path.join(directory, "backup")
    keep_backup = keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)
    _fit(replicated, inputs, targets, steps=1, callbacks=[keep_backup])
    with strategy.scope():
        restored = _tiny_model(expert_parallel=True)
    result["resumed_losses"] = {
        "restored": _fit(
            restored,
            inputs,
            targets,
            steps=2,
            epochs=2,  # the backup holds epoch 1: epoch 2 alone runs
            callbacks=[keras.callbacks.BackupAndRestore(backup)],
        ),
        "replicated": _fit(replicated, inputs, targets, steps=2),
    }
    result["resumed_weight_error"] = max(
        _max_error(a, b)
        for a, b in zip(
            logical_weights(restored), replicated.get_weights(), strict=True
        )
    )
    return result


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
        switch_options={"expert_parallel": True, "capacity_factor": 2.0},
    )
    with strategy.scope():
        model = SwitchLanguageModel(config)
    options = {
        key: value
        for key, value in config.switch_options.items()
        if key not in ("group_size", "expert_parallel")
    }
    copy = SwitchLanguageModel(config.replace(switch_options=options))
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
    result["predict_error"] = _max_error(predicted, expected)
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
        layer = _switch_ffn(expert_parallel=True, num_experts=3)
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
            _switch_ffn(expert_parallel=True).build((2, 6, 8))
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


def main(argv):
    checks, num_devices = argv[1].split(","), int(argv[2])
    strategy = split_cpu(num_devices)
    import tf_switch.distribute.expert_parallel as expert_parallel

    expert_parallel.DEFAULT_TIMEOUT_SECONDS = TIMEOUT_SECONDS
    result = {}
    for check in checks:
        if check == "layer":
            result.update(check_layer(strategy))
        elif check == "layer_einsum":  # the dispatch TPUs use
            result["einsum"] = check_layer(strategy, dispatch="einsum")
        elif check == "bfloat16":
            result.update(check_bfloat16(strategy))
        elif check == "serving_copy":
            result.update(check_serving_copy(strategy))
        elif check == "fit":
            result.update(check_fit(strategy, *argv[3:]))
        elif check == "errors":  # last: a timed-out collective aborts the rest
            result.update(check_errors(strategy))
        else:
            raise SystemExit(f"unknown check {check!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
