"""tf_switch.keras_internals: the one home of private Keras APIs.

CI runs this file on both bounds of `SUPPORTED_KERAS` (`make test` runs the
newest Keras that setup.py allows, `make test-keras-oldest` the oldest), with
the expert-parallel and backup tests that exercise the hooks for real.
"""

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_switch import keras_internals
from tf_switch.models import SwitchLanguageModel, get_preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRIVATE_NAMES = (
    "keras.src",
    "._value",
    "_flatten_layers",
    "_seed_generators",
    "_all_reduce_sum_gradients",
    "_maybe_symbolic_build",
    "reduce_per_replica",
    "_collective_all_reduce_multi_worker",
    "_save_model",
    "_load_model",
    "_current_epoch",
    "_last_batch_seen",
    "_training_metadata_path",
)


def test_private_keras_names_appear_only_in_keras_internals():
    offenders = []
    for folder in ("tf_switch", "training", "serving"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "keras_internals.py":
                continue
            source = path.read_text()
            offenders += [f"{path}: {n}" for n in PRIVATE_NAMES if n in source]
    assert offenders == []


def test_supported_range_matches_the_installed_requirement():
    (requirement,) = [
        r for r in importlib.metadata.requires("tf-switch") if r.startswith("keras")
    ]
    bounds = dict(
        (op, tuple(int(p) for p in version.split(".")))
        for op, version in re.findall(r"(>=|<)([\d.]+)", requirement)
    )
    assert (bounds[">="], bounds["<"]) == keras_internals.SUPPORTED_KERAS


def test_installed_keras_is_inside_the_supported_range():
    low, high = keras_internals.SUPPORTED_KERAS
    assert low <= keras_internals.keras_version() < high
    keras_internals.check_keras("this test")


def test_outside_the_range_each_feature_refuses_with_what_to_do(monkeypatch):
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    with pytest.raises(NotImplementedError, match=r"3\.13 to 3\.16.*3\.99\.0"):
        keras_internals.fix_multi_worker_fit()
    with pytest.raises(NotImplementedError, match="optimizer hooks"):
        keras_internals.hook_tf_optimizer("test", save_own_variables=lambda f: f)
    with pytest.raises(NotImplementedError, match="Resumable backups"):
        keras_internals.BackupAndRestoreHooks("/nonexistent")


def test_importing_and_using_the_layers_patches_nothing():
    code = (
        "import sys, keras\n"
        "from keras.src.backend.tensorflow.optimizer import TFOptimizer\n"
        "from keras.src.backend.tensorflow import trainer\n"
        "before = (dict(vars(TFOptimizer)), dict(vars(trainer.TensorFlowTrainer)),"
        " trainer.reduce_per_replica)\n"
        "from tf_switch import SwitchFFN\n"
        "layer = SwitchFFN(num_experts=4, intermediate_dim=8)\n"
        "layer(keras.ops.ones((2, 8, 4)))\n"
        "after = (dict(vars(TFOptimizer)), dict(vars(trainer.TensorFlowTrainer)),"
        " trainer.reduce_per_replica)\n"
        "assert before == after, 'patched'\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tf_switch'))\n"
        "assert 'tf_switch.distribute' not in loaded, loaded\n"
        "assert 'tf_switch.keras_internals' not in loaded, loaded\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clean" in result.stdout


def test_tf_variable_is_the_backing_tf_variable():
    import tensorflow as tf

    variable = keras.Variable(np.ones((2, 3), np.float32))
    backing = keras_internals.tf_variable(variable)
    assert isinstance(backing, tf.Variable)
    backing.assign(tf.zeros((2, 3)))
    np.testing.assert_array_equal(variable.numpy(), np.zeros((2, 3)))


def test_flatten_layers_and_seed_generators_find_nested_layers():
    config = get_preset("tiny", num_layers=2, vocab_size=40, sequence_length=8)
    config = config.replace(
        switch_options=config.switch_options.replace(jitter_noise=0.1)
    )
    model = SwitchLanguageModel(config)
    names = {layer.name for layer in keras_internals.flatten_layers(model)}
    assert "block_1_ffn_router" in names  # a router two levels down
    generators = keras_internals.seed_generators(model)
    paths = [g.state.path for g in generators]
    assert sum("jitter_seed" in p for p in paths) == 1  # the one Switch layer
    assert len(paths) > 1  # and the dropout layers' generators
    assert len(set(map(id, generators))) == len(generators)


def test_hook_tf_optimizer_wraps_once_per_marker():
    calls = []

    def wrap(original):
        def save_own_variables(self, store):
            calls.append(type(self).__name__)
            return original(self, store)

        return save_own_variables

    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build([keras.Variable(np.ones(2, np.float32))])
    keras_internals.hook_tf_optimizer("test_once", save_own_variables=wrap)
    keras_internals.hook_tf_optimizer("test_once", save_own_variables=wrap)
    optimizer.save_own_variables({})
    assert calls == ["SGD"]


def test_backup_hooks_expose_position_and_metadata(tmp_path):
    class Recording(keras_internals.BackupAndRestoreHooks):
        saved = []

        def save_backup(self):
            super().save_backup()
            self.saved.append(dict(self.backup_position))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    callback = Recording(str(tmp_path / "backup"))
    x = np.ones((8, 2), np.float32)
    model.fit(x, x[:, :1], epochs=2, batch_size=4, callbacks=[callback], verbose=0)
    # Keras records the epoch to resume at: the count of finished epochs.
    assert [p["epoch"] for p in Recording.saved] == [1, 2]
    assert callback.metadata_path.startswith(str(tmp_path / "backup"))
