"""tf.data pipelines of next-token windows whose order is a function of
(seed, epoch), so a resumed run sees exactly the batches it would have seen."""

import numpy as np
import tensorflow as tf


class EpochOrderedWindows:
    """Windows of `sequence_length + 1` tokens, shuffled per epoch.

    The token stream is cut into non-overlapping windows; each epoch visits
    them in `stateless_shuffle(range(n), seed=(seed, epoch))` order and
    yields `(inputs, targets)` = `(window[:-1], window[1:])` batches of
    `batch_size` (the last incomplete batch is dropped, so shapes are static).
    The epoch is read from `self.epoch`, a variable that `EpochSetter` (a
    Keras callback) sets at the start of each epoch, before `fit` creates the
    epoch's iterator; after `BackupAndRestore` resumes at epoch k, the data of
    epoch k is the same as in an uninterrupted run.

    Args:
        token_ids: 1-D int array, the tokenized corpus.
        sequence_length: model input length.
        batch_size: windows per batch.
        seed: shuffling seed.
        shuffle: False for validation data (fixed order).
        max_steps: at most this many batches per epoch (None: all windows).
    """

    def __init__(
        self,
        token_ids,
        sequence_length,
        batch_size,
        seed=0,
        shuffle=True,
        max_steps=None,
    ):
        window = sequence_length + 1
        num_windows = len(token_ids) // window
        if num_windows < batch_size:
            raise ValueError(
                f"The corpus has {len(token_ids)} tokens: {num_windows} windows of "
                f"{window}, fewer than one batch of {batch_size}. Use a larger "
                "corpus, or a smaller --batch-size or --sequence-length."
            )
        self.windows = tf.constant(
            np.asarray(token_ids[: num_windows * window], np.int32).reshape(
                num_windows, window
            )
        )
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.steps_per_epoch = num_windows // batch_size
        if max_steps is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, max_steps)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def order(self, epoch):
        """Window indices of one epoch: a function of (seed, epoch) only."""
        indices = tf.range(tf.shape(self.windows, out_type=tf.int64)[0])
        if not self.shuffle:
            return indices
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.random.experimental.stateless_shuffle(indices, seed=seed)

    def dataset(self):
        """The `tf.data.Dataset` for `model.fit`; each iteration is one epoch."""

        def one_epoch(_):
            indices = self.order(self.epoch.read_value())
            return tf.data.Dataset.from_tensor_slices(indices)

        windows = self.windows
        dataset = (
            tf.data.Dataset.from_tensors(0)
            .flat_map(one_epoch)
            .batch(self.batch_size, drop_remainder=True)
            .take(self.steps_per_epoch)
            # Known length: Keras shows the epoch's progress and stops cleanly.
            .apply(tf.data.experimental.assert_cardinality(self.steps_per_epoch))
            .map(lambda batch: tf.gather(windows, batch))
            .map(lambda window: (window[:, :-1], window[:, 1:]))
        )
        return dataset.prefetch(tf.data.AUTOTUNE)
