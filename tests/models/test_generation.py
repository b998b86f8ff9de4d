import numpy as np
import pytest
import tensorflow as tf

from tf_switch.models.generation import STOP_SEQUENCE_LENGTH, generate

VOCAB, LENGTH, END = 10, 12, 9


class CountingDecoder:
    """A stand-in `CachedDecoder` whose next token is (token + 1) % VOCAB,
    so every continuation is known; it reports the fed token as its one
    Switch layer's expert."""

    context_length = LENGTH
    num_switch_layers = 1

    def empty_cache(self, batch_size):
        return (tf.zeros([batch_size], tf.int32),)

    def forward(self, token_ids, cache, cache_index):
        next_token = (token_ids + 1) % VOCAB
        logits = tf.one_hot(next_token, VOCAB) * 10.0
        return logits, cache, token_ids[:, :, None]


def _generate(prompts, max_new_tokens, **options):
    return generate(CountingDecoder(), prompts, max_new_tokens, **options)


def test_rows_run_to_max_new_tokens():
    assert _generate([[1, 2], [5]], 3) == [[1, 2, 3, 4, 5], [5, 6, 7, 8]]


def test_the_end_token_ends_its_row_only():
    # Row 0 reaches END after 2 new tokens; row 1 runs on to its limit.
    out = _generate([[6, 7], [1]], 5, end_id=END)
    assert out == [[6, 7, 8, 9], [1, 2, 3, 4, 5, 6]]


def test_a_stop_sequence_ends_a_row_and_is_kept():
    out = _generate([[1], [4]], 8, stop_ids=[5, 6])
    assert out == [[1, 2, 3, 4, 5, 6], [4, 5, 6]]
    # A stop sequence is matched in new tokens only, not in the prompt.
    assert _generate([[5, 6]], 3, stop_ids=[5, 6]) == [[5, 6, 7, 8, 9]]


def test_suppressed_tokens_are_never_produced():
    out = _generate([[2]], 4, suppressed_ids=(3,))
    assert 3 not in out[0][1:]


def test_prompt_and_new_tokens_must_fit_the_context():
    with pytest.raises(ValueError, match="must fit"):
        _generate([[1] * 5], LENGTH - 4)
    with pytest.raises(ValueError, match="at most"):
        _generate([[1]], 2, stop_ids=[1] * (STOP_SEQUENCE_LENGTH + 1))
    assert len(_generate([[1] * 5], LENGTH - 5)[0]) == LENGTH


def test_the_loop_is_bounded_by_the_context_not_the_request():
    from tf_switch.models.generation import generate_tokens

    decoder = CountingDecoder()
    rows = 2
    out = generate_tokens(
        decoder,
        tf.zeros([rows, LENGTH], tf.int32),
        tf.ones([rows], tf.int32),
        tf.constant([2**31 - 1, 3]),  # unchecked here: the loop still stops
        tf.zeros([rows]),
        tf.zeros([rows], tf.int32),
        tf.ones([rows]),
        tf.zeros([rows], tf.int32),
    )
    assert out["token_ids"].shape == (rows, LENGTH)
    np.testing.assert_array_equal(out["num_tokens"], [LENGTH, 3])
    np.testing.assert_array_equal(out["token_ids"][1, 3:], -1)
    np.testing.assert_array_equal(out["expert"][1, :3, 0], out["token_ids"][1, :3])
