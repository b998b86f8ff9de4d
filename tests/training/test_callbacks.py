import json

import keras
import numpy as np
import pytest

from tf_switch import SwitchFFN
from training.callbacks import (
    CorruptCheckpointError,
    EpochSetter,
    ExpertLoadRecorder,
    ResumableBackupAndRestore,
    expert_fractions,
)
from training.data import EpochOrderedWindows


class Crash(keras.callbacks.Callback):
    """Stops the process-to-be at the start of `epoch`, as a kill would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((9,), dtype="int32")
    hidden = keras.layers.Embedding(50, 8)(inputs)
    hidden = keras.layers.Dropout(0.3)(hidden)
    hidden = hidden + SwitchFFN(4, 16, jitter_noise=0.1, expert_dropout=0.2)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(50)(hidden))
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(model, backup_dir, epochs, extra=()):
    windows = EpochOrderedWindows(np.arange(2000) % 50, 9, 8, seed=1)
    callbacks = [EpochSetter(windows), ResumableBackupAndRestore(str(backup_dir))]
    model.fit(
        windows.dataset(), epochs=epochs, callbacks=callbacks + list(extra), verbose=0
    )


def test_resume_after_a_crash_ends_with_identical_weights(tmp_path):
    uninterrupted = _model(seed=3)
    _fit(uninterrupted, tmp_path / "a", epochs=3)

    crashed = _model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(crashed, tmp_path / "b", epochs=3, extra=[Crash(epoch=2)])
    resumed = _model(seed=99)  # a new process: other initial weights and seeds
    _fit(resumed, tmp_path / "b", epochs=3)
    for a, b in zip(uninterrupted.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_random_state_is_part_of_the_backup(tmp_path):
    model = _model(seed=3)
    _fit(model, tmp_path, epochs=1)
    metadata = json.loads((tmp_path / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1
    assert len(metadata["seed_generator_states"]) >= 3  # dropouts and jitter


def test_corrupt_backup_is_a_clear_error_not_a_fresh_start(tmp_path):
    _fit(_model(seed=3), tmp_path, epochs=1)
    (tmp_path / "training_metadata.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="Refusing to restart"):
        _fit(_model(seed=3), tmp_path, epochs=2)


def test_nan_epoch_does_not_overwrite_the_last_good_backup(tmp_path):
    model = _model(seed=3)
    _fit(model, tmp_path, epochs=1)
    good = (tmp_path / "latest.weights.h5").read_bytes()

    class PoisonWeights(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            for weight in self.model.trainable_weights:
                weight.assign(weight * np.nan)

    with pytest.raises(RuntimeError, match="NaN"):
        _fit(
            model,
            tmp_path,
            epochs=2,
            extra=[PoisonWeights(), keras.callbacks.TerminateOnNaN(raise_error=True)],
        )
    assert (tmp_path / "latest.weights.h5").read_bytes() == good


def test_expert_load_recorder_keeps_one_row_per_epoch(tmp_path):
    logs = {"b_router/expert_1_fraction": 0.75, "b_router/expert_0_fraction": 0.25}
    assert expert_fractions({**logs, "loss": 1.0}) == {"b_router": [0.25, 0.75]}
    recorder = ExpertLoadRecorder(str(tmp_path / "load.json"))
    recorder.on_epoch_end(0, logs)
    recorder.on_epoch_end(1, logs)
    resumed = ExpertLoadRecorder(str(tmp_path / "load.json"))
    resumed.on_epoch_end(1, logs)  # a resumed run repeats epoch 1
    assert len(resumed.history) == 2
