"""The behaviour every tf_switch layer shares, checked in one place."""

import keras
import numpy as np


def random_inputs(shape=(2, 8, 4), seed=0):
    """Standard-normal float32 tokens, `[batch, length, hidden]` by default."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def check_config_round_trip(layer):
    """`from_config(get_config())` rebuilds a layer with the same config."""
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config


def check_save_and_reload(model, inputs, tmp_path):
    """A `.keras` file reloads with `safe_mode=True` and identical outputs."""
    expected = model(inputs, training=False)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    actual = reloaded(inputs, training=False)
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
    return reloaded


def check_fit_lowers_loss(model, inputs, targets, steps=8):
    """A few `fit` steps on one batch lower the training loss."""
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = model.fit(
        inputs, targets, epochs=steps, batch_size=len(inputs), verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    return history
