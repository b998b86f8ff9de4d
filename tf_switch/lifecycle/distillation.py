"""Distillation: a (dense) student learns from a Switch teacher's soft targets
and the true next token, with the teacher's logits computed on the fly under
`model.fit`.

    teacher = keras.saving.load_model("runs/switch/model.keras")
    student = SwitchLanguageModel(teacher.config.dense_twin())
    model = DistillationModel(student, teacher, distill_weight=0.75)
    model.compile(optimizer="adam", metrics=[Perplexity()])
    model.fit(dataset)          # (token_ids, next_token_ids) batches
    model.student.save("runs/student/model.keras")

The Switch paper (§4.2, Table 6) distilled sparse T5 models into dense ones
with 0.25 of the loss on the true token and 0.75 on the teacher's
probabilities, and kept about 30% of the teacher's quality gain over a dense
model trained alone.
"""

import keras
import tensorflow as tf

from tf_switch.keras_internals import flatten_layers
from tf_switch.layers import SwitchRouter


def distillation_loss(
    targets, student_logits, teacher_logits, distill_weight, temperature=1.0
):
    """`(1 - w) * CE(targets, student) + w * T^2 * CE(softmax(teacher / T),
    student / T)`, each a mean over tokens (Hinton et al. 2015).

    Args:
        targets: `<int>[...]` true next tokens.
        student_logits: `<float>[..., vocab]`.
        teacher_logits: `<float>[..., vocab]`; no gradient flows into them.
        distill_weight: w, the soft targets' share, in [0, 1].
        temperature: T > 0, softens both distributions in the soft term.

    Returns:
        A float32 scalar.

    Example:

    >>> logits = tf.constant([[0.0, 2.0]])
    >>> float(distillation_loss(tf.constant([1]), logits, logits, 0.0)) > 0
    True
    """
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    hard = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(targets, student_logits)
    )
    soft_targets = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    soft = tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(
            soft_targets, student_logits / temperature
        )
    )
    return (1.0 - distill_weight) * hard + distill_weight * temperature**2 * soft


class DistillationModel(keras.Model):
    """Trains `student` on a mix of the true next token and `teacher`'s
    soft targets; calls and metrics are the student's.

    The teacher is not tracked as a sublayer: it is never trained, saved with
    this model's weights (a backup holds the student and optimizer only), nor
    counted in its losses and metrics (its routers' auxiliary losses are not
    the student's). Create it under the same `tf.distribute` scope as the
    student.

    Args:
        student: a built Keras model, `token_ids -> logits`.
        teacher: a built Keras model with the same input and vocabulary.
        distill_weight: the soft targets' share of the loss (paper: 0.75).
        temperature: softening of both distributions in the soft term.
        **kwargs: `keras.Model` arguments.

    Call arguments:
        token_ids: the student's input.

    Returns:
        The student's logits.

    Example:

    >>> from tf_switch.models import SwitchLanguageModel, get_preset
    >>> config = get_preset("tiny", num_layers=2, vocab_size=50,
    ...                     sequence_length=8, hidden_dim=16,
    ...                     intermediate_dim=32, num_heads=2)
    >>> model = DistillationModel(SwitchLanguageModel(config.dense_twin()),
    ...                           SwitchLanguageModel(config))
    >>> model.compile(optimizer="adam")
    >>> ids = tf.ones((2, 8), tf.int32)
    >>> _ = model.fit(ids, ids, verbose=0)
    """

    def __init__(
        self, student, teacher, distill_weight=0.75, temperature=1.0, **kwargs
    ):
        super().__init__(**kwargs)
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(
                "Invalid value received for argument `distill_weight`. Expected "
                f"a float in [0, 1]. Received: distill_weight={distill_weight}"
            )
        if not temperature > 0:
            raise ValueError(
                "Invalid value received for argument `temperature`. Expected a "
                f"positive float. Received: temperature={temperature}"
            )
        student_vocab, teacher_vocab = (
            student.output_shape[-1],
            teacher.output_shape[-1],
        )
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"The student predicts {student_vocab} tokens and the teacher "
                f"{teacher_vocab}: distillation needs the same vocabulary."
            )
        self.student = student
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        teacher.trainable = False
        for layer in flatten_layers(teacher):
            if isinstance(layer, SwitchRouter):
                layer.update_metrics = False  # the teacher's routing is not logged
        # Bypasses Keras' attribute tracking: not a sublayer (see above).
        object.__setattr__(self, "teacher", teacher)
        self.built = True

    def call(self, token_ids, training=None):
        return self.student(token_ids, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if sample_weight is not None:
            raise ValueError("DistillationModel does not support sample weights.")
        teacher_logits = self.teacher(x, training=False)
        loss = distillation_loss(
            y, y_pred, teacher_logits, self.distill_weight, self.temperature
        )
        for extra in self.losses:  # the student's own (routing) losses
            loss += tf.cast(extra, tf.float32)
        return loss
