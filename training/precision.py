"""A plain warning when mixed_bfloat16 is asked of a CPU without native bf16.

On a CPU without `avx512_bf16` or `amx_bf16`, TensorFlow emulates bfloat16
matmuls: measured on a 2-core AMD EPYC without them, `mixed_bfloat16` made a
Switch layer 0.44-0.83x as fast as float32 while a dense FFN was unchanged
(benchmarks/RESULTS.md). With the instructions it is 1.6-2x faster.
"""

import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned = False


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (Linux), or None when they cannot be read."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def slow_bfloat16_warning(precision, flags, has_accelerator):
    """The warning for this run, or None when there is nothing to say."""
    if precision != "mixed_bfloat16" or has_accelerator or flags is None:
        return None
    if any(flag in flags for flag in NATIVE_BFLOAT16_FLAGS):
        return None
    return (
        "Note: --precision mixed_bfloat16 on a CPU without native bfloat16 "
        f"({' or '.join(NATIVE_BFLOAT16_FLAGS)} not in /proc/cpuinfo): "
        "TensorFlow emulates it, so training will likely be slower than with "
        "--precision float32, not faster (see benchmarks/RESULTS.md)."
    )


def warn_if_slow_bfloat16(precision):
    """Logs `slow_bfloat16_warning` once per process, if there is one."""
    global _warned
    has_accelerator = bool(
        tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU")
    )
    message = slow_bfloat16_warning(precision, cpu_flags(), has_accelerator)
    if message and not _warned:
        _warned = True
        logger.warning(message)
    return message
