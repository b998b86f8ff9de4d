import keras
import numpy as np
import pytest

from training.callbacks import EpochSetter
from training.data import EpochOrderedWindows


def _batches(windows, epoch):
    windows.epoch.assign(epoch)
    return [x.numpy() for x, _ in windows.dataset()]


def test_windows_are_next_token_pairs():
    windows = EpochOrderedWindows(np.arange(100), sequence_length=9, batch_size=2)
    x, y = next(iter(windows.dataset()))
    assert x.shape == (2, 9) and y.shape == (2, 9)
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    assert windows.steps_per_epoch == 5  # 10 windows of 10 tokens


def test_order_is_a_function_of_seed_and_epoch():
    make = lambda seed: EpochOrderedWindows(np.arange(400), 9, 4, seed=seed)  # noqa: E731
    first, again = make(0), make(0)
    np.testing.assert_array_equal(_batches(first, 3), _batches(again, 3))
    assert not np.array_equal(_batches(first, 3), _batches(first, 4))
    assert not np.array_equal(_batches(first, 3), _batches(make(1), 3))
    # Every window once per epoch.
    seen = np.concatenate(_batches(first, 2))[:, 0]
    assert sorted(seen) == list(range(0, 400, 10))


def test_fit_sees_each_epochs_order_also_when_starting_later():
    windows = EpochOrderedWindows(np.arange(400), 9, 4, seed=5)
    expected = {epoch: _batches(windows, epoch) for epoch in (0, 1, 2)}
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen[epoch] = []

    inputs = keras.Input((9,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Embedding(400, 2)(inputs))

    def loss(y_true, y_pred):
        return keras.ops.mean(y_pred)

    model.compile("sgd", loss, run_eagerly=True)
    original = model.train_step

    def recording_step(data):
        seen[max(seen)].append(data[0].numpy())
        return original(data)

    model.train_step = recording_step
    callbacks = [EpochSetter(windows), Record()]
    model.fit(
        windows.dataset(), epochs=3, initial_epoch=1, callbacks=callbacks, verbose=0
    )
    for epoch in (1, 2):
        np.testing.assert_array_equal(np.stack(seen[epoch]), np.stack(expected[epoch]))


def test_too_small_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochOrderedWindows(np.arange(30), 9, 4)
