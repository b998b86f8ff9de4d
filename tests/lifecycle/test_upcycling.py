import keras
import numpy as np
import pytest

from tests.lifecycle.tiny_models import (
    dense_model,
    max_difference,
    small_config,
    token_ids,
)
from tf_switch.lifecycle import UPCYCLING_OPTIONS, upcycle
from tf_switch.models import SwitchEncoder


def _trained_dense(seed=0):
    """A dense model whose weights are not at their initialization: a random
    perturbation makes biases and norms non-trivial too."""
    keras.utils.set_random_seed(seed)
    model = dense_model()
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            w + 0.05 * rng.normal(size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )
    return model


@pytest.mark.parametrize("dispatch", ["gather", "einsum"])
def test_upcycled_outputs_equal_the_dense_models_at_step_0(dispatch):
    dense = _trained_dense()
    sparse = upcycle(
        dense, 4, switch_options=UPCYCLING_OPTIONS.replace(dispatch=dispatch)
    )
    assert sparse.config.num_experts == 4
    assert [sparse.config.is_sparse(i) for i in range(4)] == [False, True, False, True]
    ids = token_ids()
    logits = np.asarray(dense(ids))
    assert np.abs(logits).max() > 0.1  # not a comparison of near-zeros
    assert max_difference(sparse(ids), logits) < 1e-5
    # The routing is not trivial: tokens spread over the experts.
    block = sparse.get_layer("block_1")
    experts = block.ffn.experts.wi[0].numpy()
    np.testing.assert_array_equal(
        experts[3], dense.get_layer("block_1").ffn.wi[0].numpy()[0]
    )


def test_upcycled_shared_expert_and_every_block_sparse_keep_the_outputs():
    dense = _trained_dense(seed=1)
    options = UPCYCLING_OPTIONS.replace(shared_expert_dim=8, shared_expert_gate=True)
    sparse = upcycle(dense, 4, switch_options=options, sparse_every=1)
    assert all(sparse.config.is_sparse(i) for i in range(4))
    ids = token_ids(seed=1)
    assert max_difference(sparse(ids), dense(ids)) < 1e-5


def test_upcycled_model_trains_and_its_experts_diverge():
    dense = _trained_dense()
    sparse = upcycle(dense, 4)
    sparse.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = token_ids(batch=8)
    history = sparse.fit(ids, np.roll(ids, -1, axis=1), epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    wi = sparse.get_layer("block_1").ffn.experts.wi[0].numpy()
    assert max_difference(wi[0], wi[1]) > 0  # the router sent them other tokens


def test_without_experts_upcycle_copies_the_dense_model():
    dense = _trained_dense()
    copy = upcycle(dense, None)
    ids = token_ids()
    np.testing.assert_array_equal(np.asarray(copy(ids)), np.asarray(dense(ids)))
    assert copy is not dense


def test_upcycling_an_encoder_keeps_its_classifier_outputs():
    encoder = SwitchEncoder(small_config().dense_twin(), num_classes=3)
    sparse = upcycle(encoder, 4)
    assert isinstance(sparse, SwitchEncoder) and sparse.num_classes == 3
    ids = token_ids()
    assert max_difference(sparse(ids), encoder(ids)) < 1e-5


def test_errors_say_what_to_do():
    dense = _trained_dense()
    with pytest.raises(ValueError, match="normalize_gates=True"):
        upcycle(dense, 4, switch_options={"top_k": 2})
    with pytest.raises(ValueError, match="--experts 0"):
        upcycle(upcycle(dense, 4), 4)
    with pytest.warns(UserWarning, match="top_k=2"):
        upcycle(dense, 4, switch_options={"normalize_gates": True})
