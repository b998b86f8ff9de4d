"""Validation loss every K training steps, for quality-per-step curves.

Keras validates once per epoch; comparing how fast two models learn needs
more points than that. `ValidationCurve` evaluates a fixed held-out set every
`every` optimizer steps and appends `step, val_loss, train_seconds` to a CSV
(`validation_curve.csv` in a training run). `train_seconds` counts training
time only (the evaluations themselves are excluded), so curves of different
models can be compared against wall-clock time.

The evaluation neither draws random numbers nor updates a metric (routers
are switched to `update_metrics=False` while its function is traced), so a
run with the curve trains exactly as a run without it.
"""

import csv
import os
import time

import keras
import tensorflow as tf

from tf_switch.keras_internals import flatten_layers
from tf_switch.layers import SwitchRouter

FIELDS = ("step", "val_loss", "train_seconds")


class ValidationCurve(keras.callbacks.Callback):
    """Appends the mean validation cross-entropy every `every` steps to `path`.

    Args:
        dataset: the held-out `(token_ids, next_ids)` batches, finite; the
            same batches are evaluated every time.
        every: optimizer steps between evaluations.
        path: the CSV file; rows already there (an earlier, resumed part of
            the run) are kept up to the step training resumes from.
    """

    def __init__(self, dataset, every, path):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be a positive int. Received: {every}")
        self.dataset = dataset
        self.every = every
        self.path = path
        self._evaluate = None
        self._train_seconds = 0.0
        self._batch_start = None
        self._next_step = every

    def _trace_evaluation(self):
        routers = [
            layer
            for layer in flatten_layers(self.model)
            if isinstance(layer, SwitchRouter)
        ]
        model = self.model

        @tf.function
        def loss_sum_and_count(token_ids, next_ids):
            logits = model(token_ids, training=False)
            losses = keras.losses.sparse_categorical_crossentropy(
                next_ids, logits, from_logits=True
            )
            return tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32)

        saved = [router.update_metrics for router in routers]
        for router in routers:
            router.update_metrics = False
        try:
            for token_ids, next_ids in self.dataset.take(1):
                loss_sum_and_count(token_ids, next_ids)  # traces without metrics
        finally:
            for router, flag in zip(routers, saved, strict=True):
                router.update_metrics = flag
        return loss_sum_and_count

    def validation_loss(self):
        """The mean cross-entropy (nats per token) over the held-out set."""
        if self._evaluate is None:
            self._evaluate = self._trace_evaluation()
        total, count = 0.0, 0.0
        for token_ids, next_ids in self.dataset:
            loss_sum, num = self._evaluate(token_ids, next_ids)
            total += float(loss_sum)
            count += float(num)
        return total / count

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        rows = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._train_seconds = float(rows[-1]["train_seconds"]) if rows else 0.0
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        if step == 0:
            self._append(0)
        self._next_step = (step // self.every + 1) * self.every

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._train_seconds += time.perf_counter() - self._batch_start
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self._next_step:  # steps_per_execution may jump past it
            self._append(step)
            self._next_step = (step // self.every + 1) * self.every

    def _append(self, step):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(
                {
                    "step": step,
                    "val_loss": f"{self.validation_loss():.6f}",
                    "train_seconds": f"{self._train_seconds:.3f}",
                }
            )
