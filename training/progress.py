"""A progress bar that a person can read while a Switch model trains.

Each router logs a dozen metrics (`<router>/expert_<i>_fraction` for every
expert, losses, drops, confidence) for training and validation. They all go
to TensorBoard, `history.csv` and the expert-load plot; the console shows the
loss, the perplexity and two routing numbers per Switch layer.
"""

import keras

# Per router: the weighted-in balance loss (1.0 is perfect balance) and the
# share of tokens over capacity.
ROUTER_METRICS_SHOWN = ("load_balance_loss", "dropped_fraction")


def concise_logs(logs):
    """The entries of `fit` logs that the progress bar shows.

    Example:

    >>> concise_logs({"loss": 2.0, "val_loss": 2.1, "perplexity": 7.4,
    ...               "r/load_balance_loss": 1.02, "r/expert_0_fraction": 0.1,
    ...               "val_r/dropped_fraction": 0.0})
    {'loss': 2.0, 'val_loss': 2.1, 'perplexity': 7.4, 'r/load_balance_loss': 1.02}
    """
    shown = {}
    for key, value in (logs or {}).items():
        if "/" in key:
            router_metric = key.rsplit("/", 1)[1]
            if key.startswith("val_") or router_metric not in ROUTER_METRICS_SHOWN:
                continue
        shown[key] = value
    return shown


class ConciseProgbar(keras.callbacks.ProgbarLogger):
    """`keras.callbacks.ProgbarLogger` showing `concise_logs` only.

    Pass it in `fit(callbacks=[...])`: Keras then adds no progress bar of its
    own. Other callbacks still receive every metric.
    """

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, concise_logs(logs))

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, concise_logs(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, concise_logs(logs))

    def on_test_end(self, logs=None):
        super().on_test_end(concise_logs(logs))
