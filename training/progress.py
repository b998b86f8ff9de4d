"""A progress bar that a person can read while a Switch model trains.

Each router logs a dozen metrics (`<router>/expert_<i>_fraction` for every
expert, losses, drops, confidence) for training and validation. They all go
to TensorBoard, `history.csv` and the expert-load plot; the console shows the
loss, the perplexity and per Switch layer its load and, where capacity
applies, its drops.
"""

import keras

from tf_switch.keras_internals import flatten_layers
from tf_switch.layers import SwitchRouter

# Per router: the busiest expert's load (N * its token share; 1.0 is perfect
# balance) and the share of tokens over capacity (not for dropless routers).
ROUTER_METRICS_SHOWN = ("max_load", "dropped_fraction")


def concise_logs(logs, dropless_routers=()):
    """The entries of `fit` logs that the progress bar shows.

    Args:
        logs: the logs of `fit`.
        dropless_routers: names of routers that never drop in training, whose
            `dropped_fraction` (always 0) is left out.

    Example:

    >>> concise_logs({"loss": 2.0, "val_loss": 2.1, "perplexity": 7.4,
    ...               "r/max_load": 1.3, "r/expert_0_fraction": 0.1,
    ...               "r/dropped_fraction": 0.0, "val_r/dropped_fraction": 0.0},
    ...              dropless_routers=["r"])
    {'loss': 2.0, 'val_loss': 2.1, 'perplexity': 7.4, 'r/max_load': 1.3}
    """
    shown = {}
    for key, value in (logs or {}).items():
        if "/" in key:
            router, router_metric = key.rsplit("/", 1)
            if key.startswith("val_") or router_metric not in ROUTER_METRICS_SHOWN:
                continue
            if router_metric == "dropped_fraction" and router in dropless_routers:
                continue
        shown[key] = value
    return shown


class ConciseProgbar(keras.callbacks.ProgbarLogger):
    """`keras.callbacks.ProgbarLogger` showing `concise_logs` only.

    Pass it in `fit(callbacks=[...])`: Keras then adds no progress bar of its
    own. Other callbacks still receive every metric.
    """

    dropless_routers = ()

    def set_model(self, model):
        super().set_model(model)
        self.dropless_routers = {
            layer.name
            for layer in flatten_layers(model)
            if isinstance(layer, SwitchRouter) and layer.is_dropless(training=True)
        }

    def _shown(self, logs):
        return concise_logs(logs, self.dropless_routers)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))

    def on_test_end(self, logs=None):
        super().on_test_end(self._shown(logs))
