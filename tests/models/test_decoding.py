import numpy as np
import pytest
import tensorflow as tf

from tf_switch.models import SwitchLanguageModel, get_preset
from tf_switch.models.decoding import CachedDecoder, inference_model
from tf_switch.models.generation import generate

LENGTH = 16


def _config(**changes):
    fields = {
        "vocab_size": 60,
        "sequence_length": LENGTH,
        "hidden_dim": 16,
        "intermediate_dim": 32,
        "num_layers": 3,
        "num_heads": 2,
        "num_experts": 4,
        "sparse_every": 1,  # every block a Switch block: three routers
        "dropout": 0.1,
        # Training groups span sequences and drop tokens at evaluation:
        # `inference_model` must route per sequence and dropless.
        "switch_options": {"group_size": 8, "eval_capacity_factor": 0.5},
    }
    return get_preset("tiny", **{**fields, **changes})


def _full_routing(model, token_ids):
    """`<int32>[B, L, S]`: each Switch layer's expert in the full pass."""
    hidden = model.get_layer("token_embedding")(token_ids)
    hidden = model.get_layer("position_embedding")(hidden)
    experts = []
    for index in range(model.config.num_layers):
        block = model.get_layer(f"block_{index}")
        hidden, stats = block(hidden, training=False, return_router_stats=True)
        if stats is not None:
            experts.append(stats["token_expert"])
    return np.stack([np.asarray(e) for e in experts], axis=-1)


@pytest.mark.parametrize("dense", [False, True], ids=["switch", "dense_twin"])
def test_cached_logits_equal_the_full_pass_at_every_position(dense):
    config = _config().dense_twin() if dense else _config()
    model = inference_model(SwitchLanguageModel(config))
    decoder = CachedDecoder(model)
    rng = np.random.default_rng(1)
    lengths = np.array([1, 4, 9], np.int32)
    prompts = [rng.integers(5, 60, size=n).tolist() for n in lengths]
    # Sampled continuations up to the context: the test's random sequences.
    sequences = generate(decoder, prompts, LENGTH - 9, temperature=1.0, seed=4)
    full_ids = np.zeros((3, LENGTH), np.int32)
    for row, ids in enumerate(sequences):
        full_ids[row, : len(ids)] = ids
    expected = np.asarray(model(full_ids))  # [B, L, V]

    padded = np.where(np.arange(LENGTH) < lengths[:, None], full_ids, 0)
    logits, cache, _ = decoder.forward(
        tf.constant(padded), decoder.empty_cache(3), tf.zeros([3], tf.int32)
    )
    rows = np.arange(3)
    np.testing.assert_allclose(
        np.asarray(logits)[rows, lengths - 1],
        expected[rows, lengths - 1],
        rtol=1e-5,
        atol=1e-5,
    )
    positions = lengths.copy()
    routing = None if dense else _full_routing(model, full_ids)
    for _ in range(LENGTH - 9):
        step_ids = full_ids[rows, positions][:, None]
        logits, cache, experts = decoder.forward(
            tf.constant(step_ids), cache, tf.constant(positions)
        )
        np.testing.assert_allclose(
            np.asarray(logits)[:, 0], expected[rows, positions], rtol=1e-5, atol=1e-5
        )
        if dense:
            assert experts.shape == (3, 1, 0)
        else:
            np.testing.assert_array_equal(experts[:, 0], routing[rows, positions])
        positions += 1


def test_a_model_that_drops_tokens_is_refused_with_the_fix():
    model = SwitchLanguageModel(_config())
    with pytest.raises(ValueError, match="inference_model"):
        CachedDecoder(model)


def test_inference_model_keeps_the_weights_and_stops_metric_updates():
    model = SwitchLanguageModel(_config())
    copy = inference_model(model)
    for original, copied in zip(model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(original.numpy(), copied.numpy())
    options = copy.config.switch_options
    assert options.eval_capacity_factor is None and options.group_size is None
    assert inference_model(SwitchLanguageModel(_config().dense_twin())).config == (
        _config().dense_twin()
    )
