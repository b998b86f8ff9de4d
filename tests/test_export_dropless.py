"""Serving routes dropless: a request's outputs depend on nothing but itself.

Neither on the other requests of its batch, nor on padding, nor (causal LM) on
its own later tokens; and TF Serving's batching, as the shipped config sets
it up, cannot change them either.
"""

import numpy as np
import pytest
import tensorflow as tf

from serving import configs
from tests.tiny_export import LENGTH, random_token_ids, tiny_model, tiny_tokenizer
from tf_switch import text
from tf_switch.export import export_for_serving, serving_model

BATCHING_CONFIG = configs.__file__.replace("configs.py", "config/batching.config")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)  # trained routing drops at evaluation
    path = export_for_serving(model, tokenizer, tmp_path_factory.mktemp("exports"))
    return model, tf.saved_model.load(path)


def _logits(loaded, ids):
    serve = loaded.signatures["serving_default"]
    return serve(token_ids=tf.constant(ids, tf.int32))["logits"].numpy()


def test_serving_copy_routes_dropless(exported):
    model, loaded = exported
    assert model.config.switch_options.eval_capacity_factor == 0.5
    options = serving_model(model).config.switch_options
    assert options.eval_capacity_factor is None and options.group_size is None
    # Every token of a full batch reaches an expert (-1 would be dropped).
    expert = loaded.signatures["route"](
        token_ids=tf.constant(random_token_ids(8, LENGTH))
    )["expert"]
    assert np.all(np.asarray(expert) >= 0)


def test_a_sequence_alone_in_a_batch_of_32_and_right_padded_agrees(exported):
    _, loaded = exported
    length = LENGTH - 4
    sequence = random_token_ids(1, length, seed=7)
    alone = _logits(loaded, sequence)[0]
    others = random_token_ids(32, length, seed=8)
    batch = np.concatenate([others[:10], sequence, others[10:]])
    in_batch = _logits(loaded, batch)[10]
    padded = np.pad(sequence, [[0, 0], [0, 4]], constant_values=text.PAD_ID)
    right_padded = _logits(loaded, padded)[0, :length]
    np.testing.assert_allclose(in_batch, alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(right_padded, alone, rtol=1e-5, atol=1e-5)


def test_a_prefix_gets_the_first_logits_of_the_full_sequence(exported):
    _, loaded = exported
    full = random_token_ids(2, LENGTH, seed=9)
    full_logits = _logits(loaded, full)
    for prefix in (1, 5, LENGTH - 1):
        np.testing.assert_allclose(
            _logits(loaded, full[:, :prefix]),
            full_logits[:, :prefix],
            rtol=1e-5,
            atol=1e-5,
        )


def tf_serving_batch(requests, pad_variable_length_inputs):
    """Merges requests as TF Serving's BatchingSession does.

    `MergeInputTensors` (batching_session.cc): with padding, each request's
    tensor is padded in every non-batch dimension to the batch's largest size
    with its own *first element* (`AddPadding`, batching_util.cc); without,
    requests of different shapes fail the whole batch (FAILED_PRECONDITION).
    Returns the merged tensor and each request's row count, by which
    `SplitOutputTensors` splits the outputs, along the batch axis only.
    """
    longest = max(request.shape[1] for request in requests)
    if not pad_variable_length_inputs:
        if len({request.shape[1:] for request in requests}) > 1:
            raise ValueError(
                "Tensors with name 'token_ids' from different tasks have "
                "different shapes and padding is turned off."
            )
        return np.concatenate(requests), [len(r) for r in requests]
    padded = [
        np.pad(
            request,
            [[0, 0], [0, longest - request.shape[1]]],
            constant_values=request.flat[0],
        )
        for request in requests
    ]
    return np.concatenate(padded), [len(r) for r in requests]


def _serve_batched(loaded, requests, pad):
    merged, sizes = tf_serving_batch(requests, pad)
    outputs = loaded.signatures["serving_default"](token_ids=tf.constant(merged))
    splits = np.cumsum([0, *sizes])
    return [
        {name: value.numpy()[start:end] for name, value in outputs.items()}
        for start, end in zip(splits[:-1], splits[1:], strict=True)
    ]


def _requests():
    """A short and a long request, each starting with [BOS] as clients send."""
    short = random_token_ids(1, 4, seed=3)
    long = random_token_ids(2, LENGTH, seed=4)
    short[:, 0] = long[:, 0] = text.BOS_ID
    return short, long


def test_tf_serving_padding_would_change_answers_so_the_config_does_not_pad(
    exported,
):
    # TF Serving pads the short request with [BOS], not [PAD]: it gets logits
    # at the long request's length and `next_token` read at the padded end.
    # The signatures cannot tell such padding from real tokens, so the
    # shipped config must not pad.
    _, loaded = exported
    short, long = _requests()
    alone = loaded.signatures["serving_default"](token_ids=tf.constant(short))
    batched = _serve_batched(loaded, [short, long], pad=True)[0]
    assert batched["logits"].shape[1] != alone["logits"].shape[1] or not np.array_equal(
        batched["next_token"], alone["next_token"].numpy()
    )
    shipped = configs.parse_batching_config(BATCHING_CONFIG)
    assert not shipped.pad_variable_length_inputs


def test_requests_padded_by_clients_batch_with_unchanged_answers(exported):
    # The README's guidance with the shipped (non-padding) config: clients
    # right-pad token_ids with [PAD] to the model's length, so every request
    # has one shape and TF Serving merges them without touching them.
    _, loaded = exported
    shipped = configs.parse_batching_config(BATCHING_CONFIG)
    short, long = _requests()
    with pytest.raises(ValueError, match="padding is turned off"):
        tf_serving_batch([short, long], shipped.pad_variable_length_inputs)
    short_padded = np.pad(short, [[0, 0], [0, LENGTH - 4]])  # [PAD] = 0
    batched = _serve_batched(
        loaded, [short_padded, long], shipped.pad_variable_length_inputs
    )
    for request, answer in zip((short_padded, long), batched, strict=True):
        alone = loaded.signatures["serving_default"](token_ids=tf.constant(request))
        np.testing.assert_allclose(
            answer["logits"], alone["logits"], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(answer["next_token"], alone["next_token"])
    short_alone = _logits(loaded, short)
    np.testing.assert_allclose(
        batched[0]["logits"][:, :4], short_alone, rtol=1e-5, atol=1e-5
    )
