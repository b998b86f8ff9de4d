"""Every use of a private Keras API in tf-switch, each behind one version range.

Keras 3 has no public hook for what these do; a Keras release may rename any
of them. So they live here and nowhere else (a test scans the code for
`keras.src` and for the private names below), each refuses a Keras outside
`SUPPORTED_KERAS` with a message that says what to do, and CI runs
`tests/test_keras_internals.py` (plus the expert-parallel, multi-worker and
backup tests that exercise them) on both bounds of that range: the oldest
Keras `setup.py` allows and the newest (`make test`, target
`test-keras-oldest`).

What each function touches, and who uses it:

- `tf_variable`: `keras.Variable._value` (expert parallelism).
- `flatten_layers`, `seed_generators`: `Layer._flatten_layers`,
  `Layer._seed_generators` (export, resumable backups).
- `hook_tf_optimizer`: `keras.src.backend.tensorflow.optimizer.TFOptimizer`,
  its `_all_reduce_sum_gradients` and public methods (expert parallelism).
- `fix_multi_worker_fit`: `keras.src.tree`, the TensorFlow trainer's
  `_maybe_symbolic_build`, `reduce_per_replica` and
  `_collective_all_reduce_multi_worker` (MultiWorkerMirroredStrategy).
- `BackupAndRestoreHooks`: `BackupAndRestore._save_model`, `_load_model`,
  `_current_epoch`, `_last_batch_seen`, `_training_metadata_path`
  (resumable backups).

Nothing here runs on import: importing `tf_switch` patches nothing.
"""

import functools
import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

# (major, minor), low inclusive, high exclusive; keep equal to setup.py's
# `keras>=3.13,<3.16` (a test checks the installed package's requirement).
SUPPORTED_KERAS = ((3, 13), (3, 16))


def keras_version():
    """The installed Keras as `(major, minor)`."""
    return tuple(int(part) for part in keras.version().split(".")[:2])


def check_keras(feature):
    """Raises `NotImplementedError` unless the installed Keras is supported.

    Args:
        feature: what needs the private API, for the message.
    """
    low, high = SUPPORTED_KERAS
    if not low <= keras_version() < high:
        raise NotImplementedError(
            f"{feature} uses Keras internals checked on Keras "
            f"{'.'.join(map(str, low))} to {'.'.join(map(str, high))} "
            f"(exclusive); this is Keras {keras.version()}. Install a Keras in "
            "that range (pip install 'tf-switch' pins it)."
        )


def tf_variable(variable):
    """The `tf.Variable` (a mirrored one, when distributed) behind a variable.

    Not `variable.value`: inside a mixed-precision call that is a cast tensor.
    """
    if isinstance(variable, keras.Variable):
        return variable._value
    return variable


def flatten_layers(model):
    """`model` and every layer nested in it, each once."""
    return list(model._flatten_layers(include_self=True))


def seed_generators(model):
    """Every `keras.random.SeedGenerator` of `model`'s layers, in a fixed order
    (dropout masks, router jitter)."""
    return [
        generator
        for layer in flatten_layers(model)
        for generator in getattr(layer, "_seed_generators", [])
    ]


# --- Keras' TensorFlow optimizer ------------------------------------------


def _tf_optimizer_class():
    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    return TFOptimizer


_OPTIMIZER_METHODS = {
    "all_reduce_gradients": "_all_reduce_sum_gradients",
    "add_variable_from_reference": "add_variable_from_reference",
    "save_own_variables": "save_own_variables",
    "load_own_variables": "load_own_variables",
}


def hook_tf_optimizer(marker, **wrappers):
    """Wraps methods of Keras' TensorFlow optimizer base class once per marker.

    Every Keras optimizer on the TensorFlow backend inherits them. Idempotent:
    a second call with the same `marker` does nothing.

    Args:
        marker: a name for this set of hooks.
        **wrappers: `name=wrap`, where `wrap(original) -> replacement` and
            name is one of `all_reduce_gradients` (sums each gradient over
            the replicas; `(self, grads_and_vars) -> grads_and_vars`),
            `add_variable_from_reference` (creates a slot like a model
            variable), `save_own_variables`, `load_own_variables`.

    Raises:
        NotImplementedError: outside `SUPPORTED_KERAS`.
    """
    check_keras("Expert parallelism's optimizer hooks")
    optimizer_class = _tf_optimizer_class()
    flag = f"_tf_switch_hooks_{marker}"
    if getattr(optimizer_class, flag, False):
        return
    for name, wrap in wrappers.items():
        method = _OPTIMIZER_METHODS[name]
        setattr(optimizer_class, method, wrap(getattr(optimizer_class, method)))
    setattr(optimizer_class, flag, True)


# --- Multi-worker `fit` ----------------------------------------------------


def fix_multi_worker_fit():
    """Makes Keras 3 `model.fit` work under `MultiWorkerMirroredStrategy`.

    Keras' TensorFlow trainer fails in multi-worker mode twice
    (keras-team/keras#20585, open; also tensorflow/tensorflow#72388):

    1. `_maybe_symbolic_build` builds the model from a first batch that it
       reduces with `strategy.reduce("MEAN", batch)`, which a multi-worker
       strategy refuses for a `PerReplica` batch. Only the batch's shapes
       matter for building, so the fix builds from this worker's first local
       batch.
    2. `reduce_per_replica` averages the step's logs with
       `strategy.reduce("MEAN", v, axis=0)`, and scalar losses have no axis 0.
       The fix averages over replicas only (`axis=None`), as the
       single-machine branch of the same function does.

    Idempotent. `tests/distribute/test_multi_worker.py` runs two workers
    without the fix to prove it is still needed; when that test starts to
    pass, drop the fix for the Keras releases that no longer need it.

    Raises:
        NotImplementedError: outside `SUPPORTED_KERAS`.
    """
    check_keras("The MultiWorkerMirroredStrategy fix for model.fit")
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_class = tf_trainer.TensorFlowTrainer
    if getattr(trainer_class, "_tf_switch_multi_worker_fix", False):
        return

    def is_multi_worker(strategy):
        return tf_trainer._collective_all_reduce_multi_worker(strategy)

    def first_local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return value.values[0]
        return value

    original_build = trainer_class._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    @functools.wraps(original_build)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and is_multi_worker(self._distribute_strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(first_local_value, next(batches))
                break
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    @functools.wraps(original_reduce)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return original_reduce(values, strategy, reduction)

    trainer_class._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    trainer_class._tf_switch_multi_worker_fix = True
    logger.info(
        "Patched Keras %s for MultiWorkerMirroredStrategy (keras-team/keras#20585).",
        keras.version(),
    )


# --- BackupAndRestore ------------------------------------------------------


class BackupAndRestoreHooks(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with its save and load steps exposed.

    Subclasses override `save_backup` / `load_backup` (calling `super()`),
    read `backup_position` (the epoch and batch being saved) and
    `metadata_path` (the JSON that Keras writes after the weights, so a
    backup is complete when its metadata is).
    """

    def __init__(self, backup_dir, **kwargs):
        check_keras("Resumable backups")
        super().__init__(backup_dir, **kwargs)

    def save_backup(self):
        super()._save_model()

    def load_backup(self):
        super()._load_model()

    @property
    def backup_position(self):
        return {"epoch": self._current_epoch, "batch": self._last_batch_seen}

    @property
    def metadata_path(self):
        return self._training_metadata_path

    # The private methods Keras calls.
    def _save_model(self):
        self.save_backup()

    def _load_model(self):
        self.load_backup()
