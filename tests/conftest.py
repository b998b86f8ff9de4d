"""Shared test set-up: quiet TensorFlow, a small Hypothesis profile, a clean
dtype policy for every test."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "tf_switch",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("tf_switch")


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends under the float32 policy."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True, scope="module")
def collect_garbage_between_modules():
    """Collects a module's cyclic garbage (loaded SavedModels, lookup tables,
    servers) when the module ends, not whenever a later module's allocation
    triggers the collector: a CI worker once aborted ("Fatal Python error:
    Aborted", while garbage-collecting) inside tests/test_text.py's first
    tf.function trace, after other modules had run in that worker."""
    yield
    gc.collect()
