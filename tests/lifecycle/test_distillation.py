import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.lifecycle.tiny_models import dense_model, switch_model, token_ids
from tf_switch.lifecycle import DistillationModel, distillation_loss
from tf_switch.metrics import Perplexity


def test_loss_mixes_hard_and_soft_cross_entropy():
    # Student uniform over 2 tokens: CE is ln 2 against any target.
    student = tf.zeros((1, 2))
    teacher = tf.constant([[0.0, np.log(3.0)]])  # probabilities 1/4, 3/4
    targets = tf.constant([1])
    ln2 = np.log(2.0)
    assert float(distillation_loss(targets, student, teacher, 0.0)) == pytest.approx(
        ln2
    )
    assert float(distillation_loss(targets, student, teacher, 1.0)) == pytest.approx(
        ln2
    )
    # A confident student: hard CE -ln p(1), soft CE -(1/4 ln p0 + 3/4 ln p1).
    student = tf.constant([[0.0, np.log(9.0)]])  # p = 0.1, 0.9
    hard = -np.log(0.9)
    soft = -(0.25 * np.log(0.1) + 0.75 * np.log(0.9))
    loss = distillation_loss(targets, student, teacher, 0.75)
    assert float(loss) == pytest.approx(0.25 * hard + 0.75 * soft, rel=1e-6)


def test_temperature_scales_the_soft_term_by_t_squared():
    student = tf.constant([[0.0, 1.0, 2.0]])
    teacher = tf.constant([[2.0, 0.0, 1.0]])
    targets = tf.constant([2])
    t = 2.0
    soft_targets = tf.nn.softmax(teacher / t)
    expected = t**2 * tf.nn.softmax_cross_entropy_with_logits(soft_targets, student / t)
    loss = distillation_loss(targets, student, teacher, 1.0, temperature=t)
    assert float(loss) == pytest.approx(float(expected[0]), rel=1e-6)


def _distiller(weight=0.75):
    keras.utils.set_random_seed(0)
    teacher = switch_model()
    student = dense_model()
    model = DistillationModel(student, teacher, distill_weight=weight)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=[Perplexity()])
    return model, student, teacher


def test_fit_trains_the_student_only_and_teacher_losses_stay_out():
    model, student, teacher = _distiller()
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    ids = token_ids(batch=8)
    targets = np.roll(ids, -1, axis=1)
    history = model.fit(ids, targets, epochs=4, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert "perplexity" in history.history
    assert not any("router" in key for key in history.history)  # teacher's
    for before, after in zip(teacher_weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    # The model's weights are the student's: a backup holds no teacher.
    assert len(model.weights) == len(student.weights)
    # The reported loss is the mix alone (the teacher's router losses, ~0.01
    # each, are not in it).
    logits, teacher_logits = student(ids), teacher(ids)
    expected = distillation_loss(targets, logits, teacher_logits, 0.75)
    evaluated = model.evaluate(ids, targets, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(float(expected), rel=1e-4)


def test_weight_zero_is_plain_next_token_training():
    model, student, _ = _distiller(weight=0.0)
    ids = token_ids()
    targets = np.roll(ids, -1, axis=1)
    loss = model.evaluate(ids, targets, verbose=0, return_dict=True)["loss"]
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        targets, student(ids)
    )
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="distill_weight"):
        DistillationModel(dense_model(), switch_model(), distill_weight=1.5)
    with pytest.raises(ValueError, match="same vocabulary"):
        DistillationModel(dense_model(vocab_size=60), switch_model())
