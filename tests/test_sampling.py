import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tf_switch import sampling

VOCAB = 12


def _logits(rows, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, VOCAB)).astype("float32")


def _grid(rows, draws):
    """Every row sees `draws` evenly spaced uniforms: exact frequencies."""
    return np.tile((np.arange(draws) + 0.5) / draws, rows).astype("float32")


def _sample(logits, temperature=1.0, top_k=0, top_p=1.0, draw=None, suppressed=()):
    rows = logits.shape[0]

    def column(value, dtype):
        return tf.constant(np.broadcast_to(np.asarray(value, dtype), [rows]))

    draw = np.full(rows, 0.5, np.float32) if draw is None else draw
    return sampling.sample(
        tf.constant(logits),
        column(temperature, np.float32),
        column(top_k, np.int32),
        column(top_p, np.float32),
        tf.constant(draw),
        suppressed,
    ).numpy()


def _frequencies(logits, draws=4000, **options):
    """Token frequencies of one row's logits over a grid of uniform draws."""
    repeated = np.repeat(logits[None], draws, axis=0)
    tokens = _sample(repeated, draw=_grid(1, draws), **options)
    return np.bincount(tokens, minlength=VOCAB) / draws


def test_greedy_is_the_argmax_and_skips_suppressed_tokens():
    logits = _logits(6)
    np.testing.assert_array_equal(
        _sample(logits, temperature=0.0), np.argmax(logits, -1)
    )
    logits[:, 3] = 50.0
    assert set(_sample(logits, temperature=0.0, suppressed=(3,))) != {3}
    assert 3 not in _sample(logits, temperature=5.0, suppressed=(3,))


def test_sampling_follows_the_softmax_of_logits_over_temperature():
    logits = _logits(1)[0]
    for temperature in (0.5, 1.0, 2.0):
        probs = np.exp(logits / temperature)
        np.testing.assert_allclose(
            _frequencies(logits, temperature=temperature),
            probs / probs.sum(),
            atol=2e-3,
        )


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    top_k=st.integers(0, VOCAB + 2),
    top_p=st.floats(0.05, 1.0),
)
def test_top_k_and_top_p_never_leave_the_allowed_set(seed, top_k, top_p):
    logits = _logits(1, seed)[0]
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(logits - logits.max())
    probs = probs[order] / probs.sum()
    before = np.cumsum(probs) - probs
    allowed = before < top_p - 1e-6
    if top_k:
        allowed &= np.arange(VOCAB) < top_k
    allowed[0] = True
    frequencies = _frequencies(logits, draws=1000, top_k=top_k, top_p=top_p)
    allowed_tokens = set(order[allowed])
    assert set(np.flatnonzero(frequencies)) <= allowed_tokens | set(
        order[np.flatnonzero(np.abs(before - top_p) < 1e-5)]  # float ties at p
    )
    # Renormalized over the allowed set.
    kept = np.where(allowed, probs, 0.0)
    expected = np.zeros(VOCAB)
    expected[order] = kept / kept.sum()
    np.testing.assert_allclose(frequencies, expected, atol=3e-3)


def test_rows_sample_with_their_own_options():
    logits = np.repeat(_logits(1)[0][None], 3, axis=0)
    tokens = _sample(
        logits,
        temperature=[0.0, 1.0, 1.0],
        top_k=[0, 1, 0],
        draw=np.array([0.99, 0.99, 0.99], np.float32),
    )
    top = np.argmax(logits[0])
    assert tokens[0] == top and tokens[1] == top  # greedy; top-1 sampling
    assert tokens[2] != top  # the last draw lands in the tail


def test_row_seeds_depend_on_the_row_alone():
    ids = np.random.default_rng(0).integers(5, 100, size=(4, 10)).astype("int32")
    lengths = np.array([3, 10, 7, 3], np.int32)
    seeds = np.array([0, 0, 5, 1], np.int32)
    batch = sampling.row_seeds(ids, lengths, seeds).numpy()
    for row in range(4):
        padded = np.where(np.arange(10) < lengths[row], ids[row], 99)[None]
        alone = sampling.row_seeds(
            padded[:, :8], lengths[row : row + 1], seeds[row : row + 1]
        )
        if lengths[row] <= 8:  # padding and width never change a seed
            assert alone.numpy()[0] == batch[row]
    again = sampling.row_seeds(ids, lengths, seeds + 1).numpy()
    assert np.all(again != batch)  # the seed input changes every row's seed
    moved = ids.copy()
    moved[:, [0, 1]] = moved[:, [1, 0]]  # the same tokens in another order
    assert np.all(sampling.row_seeds(moved, lengths, seeds).numpy() != batch)


def test_uniform_draws_are_uniform_and_differ_by_step():
    row_seed = sampling.row_seeds(
        np.arange(2000, dtype=np.int32)[:, None],
        np.ones(2000, np.int32),
        np.zeros(2000, np.int32),
    )
    first = sampling.uniform(row_seed, 0).numpy()
    second = sampling.uniform(row_seed, 1).numpy()
    assert first.min() >= 0.0 and first.max() < 1.0
    counts = np.histogram(first, bins=10, range=(0, 1))[0]
    assert counts.min() > 140 and counts.max() < 260  # 200 expected per bin
    assert np.mean(first == second) < 0.01


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sample_runs_under_xla(temperature):
    logits = tf.constant(_logits(2))
    fn = tf.function(sampling.sample, jit_compile=True)
    tokens = fn(
        logits,
        tf.fill([2], temperature),
        tf.constant([0, 3]),
        tf.constant([1.0, 0.9]),
        tf.constant([0.3, 0.6]),
    )
    assert tokens.shape == (2,)
