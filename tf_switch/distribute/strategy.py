"""Choosing the `tf.distribute` strategy a model trains under."""

import glob
import importlib.util
import json
import logging
import os

import tensorflow as tf

from tf_switch import keras_internals

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")


class StrategyUnavailableError(RuntimeError):
    """The requested hardware is not there; training must not silently
    fall back to something else."""


def split_cpu(num_devices):
    """Splits the CPU into `num_devices` logical devices, for data or expert
    parallelism on one machine (tests, benchmarks, trying things out).

    Must run before TensorFlow initializes its devices, that is before the
    first op. Returns the logical CPU device names.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as error:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != num_devices:
            raise RuntimeError(
                f"Cannot split the CPU into {num_devices} devices: TensorFlow "
                f"already runs with {current}. Call split_cpu() before any "
                "TensorFlow op."
            ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _cluster_size():
    """Number of tasks that TF_CONFIG names (0 without TF_CONFIG)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values())


def _tpu_hinted():
    """Whether this machine looks like it has a TPU: probing for one on a
    machine without would reset TensorFlow's context.

    A named TPU, or TPU VM devices (`/dev/accel*` on v2-v4, VFIO on v5e and
    later) together with the `libtpu` package that `tensorflow-tpu` installs
    (VFIO devices alone also appear on GPU and network pass-through hosts).
    """
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    devices = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(devices) and importlib.util.find_spec("libtpu") is not None


def _tpu_strategy():
    # "local" is a TPU VM (Colab, Kaggle, Cloud TPU VMs); a TPU node names
    # itself in TPU_NAME.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME", "local")
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker_strategy():
    keras_internals.fix_multi_worker_fit()
    if _cluster_size() < 2:
        logger.warning(
            "MultiWorkerMirroredStrategy without a TF_CONFIG cluster of two or "
            "more tasks trains on this machine alone."
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def resolve_strategy(name="auto"):
    """A `tf.distribute` strategy by name, with the choice logged.

    - `"auto"`: several machines when `TF_CONFIG` names a cluster of two or
      more tasks; else a TPU when one is attached (a TPU VM or `TPU_NAME`);
      else MirroredStrategy over all local GPUs when there are several; else
      the default (single-device) strategy.
    - `"cpu"`: the default strategy.
    - `"mirrored"`: MirroredStrategy over all local GPUs, or over all logical
      CPU devices when there is no GPU (see `split_cpu`).
    - `"multi_worker"`: MultiWorkerMirroredStrategy, with Keras 3's
      multi-worker `fit` fixed (`keras_internals.fix_multi_worker_fit`).
    - `"tpu"`: TPUStrategy; raises `StrategyUnavailableError` without a TPU.

    Example:

    >>> resolve_strategy("cpu").num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(
            "Invalid value received for argument `name`. Expected one of "
            f"{STRATEGIES}. Received: name={name!r}"
        )
    if name == "auto" and _cluster_size() >= 2:
        name = "multi_worker"
    if name == "tpu" or (name == "auto" and _tpu_hinted()):
        try:
            strategy = _tpu_strategy()
        except Exception as error:  # noqa: BLE001 (any failure: no usable TPU)
            if name == "tpu":
                raise StrategyUnavailableError(
                    f"A TPU was requested but none was found ({error}). On "
                    "Colab choose Runtime > Change runtime type > TPU, and "
                    "install tensorflow-tpu next to tensorflow."
                ) from error
            logger.warning("No usable TPU (%s); looking for GPUs.", error)
        else:
            logger.info("Training on a TPU: %d cores.", strategy.num_replicas_in_sync)
            return strategy
    if name == "multi_worker":
        strategy = _multi_worker_strategy()
        logger.info(
            "Training on several machines: MultiWorkerMirroredStrategy, %d replicas.",
            strategy.num_replicas_in_sync,
        )
        return strategy
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        logger.info("Training data-parallel on %s.", ", ".join(devices))
        return strategy
    strategy = tf.distribute.get_strategy()
    logger.info(
        "Training on one device: %s.", gpus[0] if gpus else "the CPU (no GPU found)"
    )
    return strategy


def is_chief(strategy=None):
    """Whether this process writes checkpoints, logs and exports.

    True except on the non-chief workers of a multi-worker cluster: the task
    of type "chief", or worker 0 when there is none, writes.
    """
    strategy = strategy or tf.distribute.get_strategy()
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    if in_multi_worker_mode is None or not in_multi_worker_mode():
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and ("chief" not in cluster)
    )
