"""Token samplers and per-row seeds, as pure TensorFlow functions.

One sampler serves every caller (the SavedModel's `generate` signature, the
training demo's sample, `training/generate.py`): greedy (temperature 0),
temperature, top-k and top-p (nucleus), per row of a batch.

Randomness is a function of the row alone. Each row's seed is a hash of its
own prompt ids and its `seed` value, and the uniform draw of step i is a hash
of (row seed, i), so a request gives the same text alone or batched with
others (TF Serving's batching merges requests), and the same request and
seed always give the same text. The hash is integer arithmetic on uint32
(multiply, xor, shift wrap by definition), built from core ops that TF
Serving and XLA run; a draw is inverse-CDF sampling with one uniform per row
and step.

Reference for top-p: Holtzman et al., "The Curious Case of Neural Text
Degeneration", arXiv 1904.09751.
"""

import tensorflow as tf

_MASK32 = 0xFFFFFFFF


def _u32(value):
    return tf.constant(value, tf.uint32)


def mix32(x):
    """A 32-bit integer hash with full avalanche (lowbias32), `<uint32>` in/out."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def row_seeds(token_ids, lengths, seed):
    """Each row's seed from its own tokens and `seed`: `<uint32>[B]`.

    Args:
        token_ids: `<int32>[B, L]`, right-padded; positions >= `lengths` are
            ignored, so padding never changes a seed.
        lengths: `<int32>[B]`.
        seed: `<int32>[B]`, the caller's seed per row.
    """
    length = tf.shape(token_ids)[1]
    positions = tf.range(length)
    ids = tf.bitcast(token_ids, tf.uint32)
    salted = ids * _u32(0x9E3779B1) + tf.bitcast(positions, tf.uint32)[None, :]
    hashed = mix32(salted * _u32(0x85EBCA77) + _u32(1))  # [B, L]
    hashed = tf.where(positions[None, :] < lengths[:, None], hashed, _u32(0))
    # A sum mod 2^32 through int64 (no uint32 Sum kernel is needed).
    total = tf.bitwise.bitwise_and(
        tf.reduce_sum(tf.cast(hashed, tf.int64), axis=1), _MASK32
    )
    total = tf.cast(total, tf.uint32)
    salt = mix32(tf.bitcast(seed, tf.uint32) + _u32(0x632BE5AB))
    return mix32(tf.bitwise.bitwise_xor(total, salt) + tf.bitcast(lengths, tf.uint32))


def uniform(row_seed, step):
    """`<float32>[B]` in [0, 1): the draw of step `step` (scalar int32)."""
    counter = tf.bitcast(tf.cast(step, tf.int32), tf.uint32)
    bits = mix32(
        tf.bitwise.bitwise_xor(
            mix32(row_seed + counter * _u32(0x9E3779B9)), _u32(0x5BD1E995)
        )
    )
    # The top 24 bits: exactly representable in float32, so u < 1.
    top = tf.bitwise.right_shift(bits, _u32(8))
    return tf.cast(top, tf.float32) * (1.0 / (1 << 24))


def sample(logits, temperature, top_k, top_p, draw, suppressed_ids=()):
    """One token per row: greedy where temperature is 0, else sampled.

    The sampled distribution is softmax(logits / temperature) restricted to
    the `top_k` most probable tokens (0: no limit) and to the smallest set
    of most probable tokens whose probability reaches `top_p` (1.0: no
    limit), renormalized. The most probable token is always allowed, and a
    token outside the allowed set is never returned.

    Args:
        logits: `<float32>[B, V]`.
        temperature: `<float32>[B]`, >= 0.
        top_k: `<int32>[B]`, >= 0.
        top_p: `<float32>[B]`, in (0, 1].
        draw: `<float32>[B]` uniform in [0, 1), e.g. from `uniform`.
        suppressed_ids: token ids never produced (e.g. [PAD], [BOS]).

    Returns:
        `<int32>[B]`.
    """
    vocab_size = logits.shape[-1]
    if suppressed_ids:
        banned = tf.scatter_nd(
            [[i] for i in suppressed_ids],
            tf.ones([len(suppressed_ids)], tf.bool),
            [vocab_size],
        )
        logits = tf.where(banned[None, :], float("-inf"), logits)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled():
        scale = tf.where(temperature > 0, temperature, 1.0)[:, None]
        # Sorted, most probable first: top-k and top-p are prefixes.
        values, order = tf.math.top_k(logits / scale, k=vocab_size)  # [B, V]
        probs = tf.nn.softmax(values, axis=-1)
        rank = tf.range(vocab_size)[None, :]
        k = tf.where(top_k > 0, tf.minimum(top_k, vocab_size), vocab_size)
        before = tf.cumsum(probs, axis=-1, exclusive=True)
        allowed = (rank < k[:, None]) & (before < top_p[:, None]) & (probs > 0)
        allowed |= rank == 0  # the most probable token, always
        kept = tf.where(allowed, probs, 0.0)
        cdf = tf.cumsum(kept, axis=-1)
        threshold = draw[:, None] * cdf[:, -1:]
        index = tf.reduce_sum(tf.cast(cdf <= threshold, tf.int32), axis=-1)
        last_allowed = tf.reduce_sum(tf.cast(allowed, tf.int32), axis=-1) - 1
        index = tf.minimum(index, last_allowed)
        chosen = tf.gather(order, index, batch_dims=1)
        return tf.where(temperature > 0, chosen, greedy)

    # Greedy rows skip the sort; a batch of only greedy rows skips it all.
    return tf.cond(tf.reduce_any(temperature > 0), sampled, lambda: greedy)
