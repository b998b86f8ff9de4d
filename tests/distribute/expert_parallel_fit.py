"""The `fit` check of `expert_parallel_worker`: training, saving and resuming.

`model.fit` with Adam on an expert-parallel model against one with
replicated experts; with a directory, also saving and loading weights across
the two kinds of model and resuming from a replicated backup.
"""

import os

import numpy as np
import tensorflow as tf

from tests.distribute.expert_parallel_checks import max_error, switch_ffn


def _tiny_model(expert_parallel):
    import keras

    inputs = keras.Input((6, 8))
    hidden = switch_ffn(expert_parallel)(inputs)
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
            max_error(a, b)
            for a, b in zip(
                logical_weights(parallel), replicated.get_weights(), strict=True
            )
        ),
        "slot_error": max(
            max_error(a, b)
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
        max_error(a, b)
        for a, b in zip(plain.get_weights(), logical_weights(parallel), strict=True)
    )
    result["plain_load_slot_error"] = max(
        max_error(a, b)
        for a, b in zip(
            _optimizer_state(plain.optimizer),
            _optimizer_state(parallel.optimizer),
            strict=True,
        )
    )
    result["keras_reload_error"] = max_error(reloaded(inputs), replicated(inputs))
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
        max_error(a, b)
        for a, b in zip(
            logical_weights(restored), replicated.get_weights(), strict=True
        )
    )
    return result
