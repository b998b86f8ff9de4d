"""Makes Keras 3 `model.fit` work under `MultiWorkerMirroredStrategy`.

Keras 3's TensorFlow trainer fails in multi-worker mode twice
(https://github.com/keras-team/keras/issues/20585, open; also
tensorflow/tensorflow#72388):

1. `_maybe_symbolic_build` builds the model from a first batch that it
   reduces with `strategy.reduce("MEAN", batch)`, which a multi-worker
   strategy refuses for a `PerReplica` batch ("Attempt to convert a value
   (PerReplica ...)"). Only the batch's shapes matter for building, so the
   fix builds from this worker's first local batch.
2. `reduce_per_replica` averages the step's logs with
   `strategy.reduce("MEAN", v, axis=0)`, and scalar losses have no axis 0
   ("Invalid reduction dimension 0"). The fix averages over replicas only
   (`axis=None`), which is what the single-machine branch of the same
   function computes.

`apply()` patches both while the installed Keras is one known to need it;
`tests/distribute/test_multi_worker.py` runs two workers without the fix to
prove it is still needed.
"""

import functools
import logging

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

from tf_switch.distribute.keras_versions import keras_in

logger = logging.getLogger(__name__)

# Keras versions with the bug: every 3.x release so far. Narrow the range when
# a fixed release appears (the unpatched two-worker test then passes).
AFFECTED_KERAS = ((3, 0), (4, 0))


def needs_fix():
    """Whether the installed Keras has the multi-worker `fit` bug."""
    return keras_in(AFFECTED_KERAS)


def _is_multi_worker(strategy):
    return tf_trainer._collective_all_reduce_multi_worker(strategy)


def _first_local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _fix_symbolic_build(original):
    @functools.wraps(original)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and _is_multi_worker(self._distribute_strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(_first_local_value, next(batches))
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    return _maybe_symbolic_build


def _fix_reduce_per_replica(original):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            return tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return original(values, strategy, reduction)

    return reduce_per_replica


def apply():
    """Patches Keras' TF trainer for multi-worker `fit`; idempotent.

    Returns whether the patch is in place (False when this Keras does not
    need it).
    """
    if not needs_fix():
        return False
    trainer_class = tf_trainer.TensorFlowTrainer
    if not getattr(trainer_class, "_tf_switch_multi_worker_fix", False):
        trainer_class._maybe_symbolic_build = _fix_symbolic_build(
            trainer_class._maybe_symbolic_build
        )
        tf_trainer.reduce_per_replica = _fix_reduce_per_replica(
            tf_trainer.reduce_per_replica
        )
        trainer_class._tf_switch_multi_worker_fix = True
        logger.info(
            "Patched Keras %s for MultiWorkerMirroredStrategy "
            "(keras-team/keras#20585).",
            keras.version(),
        )
    return True
