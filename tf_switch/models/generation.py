"""Text generation with a `CachedDecoder`: prefill, then one token per step.

    decoder = CachedDecoder(inference_model(model))
    out = generate_tokens(decoder, prompt_ids, prompt_lengths, max_new_tokens,
                          temperature, top_k, top_p, seed, end_id=EOS_ID)
    out["token_ids"]  # <int32>[B, W] new tokens, -1 after each row's end

Graph code (a `tf.while_loop` over static shapes), used in the SavedModel's
`generate` signature and, through `generate`, by the training demo: one
decoding loop and one sampler (`tf_switch.sampling`) for both.

A row ends after `max_new_tokens` tokens, on the end token, or on its stop
sequence; rows end independently and the loop stops when all have ended. The
loop never runs more than the context length L steps, whatever the inputs
(callers validate that prompt plus new tokens fit L).
"""

import weakref

import numpy as np
import tensorflow as tf

from tf_switch import sampling

STOP_SEQUENCE_LENGTH = 8  # the longest stop sequence, in tokens


def _set_column(buffer, column, values):
    """`buffer[:, column] = values` for `[B, W, ...]` buffers, static shapes."""
    hit = tf.range(tf.shape(buffer)[1]) == column  # [W]
    hit = tf.reshape(hit, [1, -1] + [1] * (buffer.shape.rank - 2))
    return tf.where(hit, tf.expand_dims(values, 1), buffer)


def _ends_with(tail, stop_ids):
    """Whether each row's recent tokens `tail` `[B, K]` end with its stop
    sequence `stop_ids` `[B, K]` (right-aligned, -1 before it; all -1: none)."""
    wanted = stop_ids >= 0
    matches = tf.reduce_all(~wanted | (tail == stop_ids), axis=1)
    return matches & tf.reduce_any(wanted, axis=1)


def generate_tokens(
    decoder,
    prompt_ids,
    prompt_lengths,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    end_id=None,
    stop_ids=None,
    suppressed_ids=(),
):
    """Samples new tokens after each prompt, with the decoder's cache.

    Args:
        decoder: a `tf_switch.models.decoding.CachedDecoder`.
        prompt_ids: `<int32>[B, L]`, each prompt right-padded to the context.
        prompt_lengths: `<int32>[B]`, >= 1.
        max_new_tokens: `<int32>[B]`, with `prompt_lengths + max_new_tokens
            <= L` (checked by the caller; the loop is capped at L anyway).
        temperature, top_k, top_p, seed: `[B]` each; see
            `tf_switch.sampling.sample` and `tf_switch.sampling.row_seeds`.
        end_id: a token id that ends a row (kept in its output), or None.
        stop_ids: optional `<int32>[B, STOP_SEQUENCE_LENGTH]`, a token
            sequence per row, right-aligned, -1 before it (all -1: none);
            a row ends once its new tokens end with it (kept in its output).
        suppressed_ids: token ids never sampled (e.g. [PAD], [BOS]).

    Returns:
        A dict: `token_ids <int32>[B, W]` (W = max(max_new_tokens), -1 after
        each row's last new token), `num_tokens <int32>[B]` and `expert
        <int32>[B, W, S]`, each new token's expert in each of the S Switch
        layers (-1 after the row's end), as the `route` signature reports
        for the finished text.
    """
    length = decoder.context_length
    batch = tf.shape(prompt_ids)[0]
    if stop_ids is None:
        stop_ids = tf.fill([batch, STOP_SEQUENCE_LENGTH], -1)
    logits, cache, _ = decoder.forward(
        prompt_ids, decoder.empty_cache(batch), tf.zeros([batch], tf.int32)
    )
    next_logits = tf.gather(logits, prompt_lengths - 1, batch_dims=1)  # [B, V]
    row_seed = sampling.row_seeds(prompt_ids, prompt_lengths, seed)
    width = tf.reduce_max(tf.concat([max_new_tokens, [0]], 0))
    steps = tf.minimum(width, length)  # bounded by the model, not the caller
    tokens = tf.fill([batch, length], -1)
    experts = tf.fill([batch, length, decoder.num_switch_layers], -1)
    tail = tf.fill([batch, STOP_SEQUENCE_LENGTH], -1)
    done = max_new_tokens <= 0

    def step(index, next_logits, cache, tokens, experts, tail, done):
        draw = sampling.uniform(row_seed, index)
        token = sampling.sample(
            next_logits, temperature, top_k, top_p, draw, suppressed_ids
        )
        active = ~done
        token = tf.where(active, token, 0)
        # Feed the new token: its routing, and the logits of the next one.
        position = tf.minimum(prompt_lengths + index, length - 1)
        logits, cache, expert = decoder.forward(token[:, None], cache, position)
        tokens = _set_column(tokens, index, tf.where(active, token, -1))
        expert = tf.where(active[:, None], expert[:, 0], -1)
        experts = _set_column(experts, index, expert)
        tail = tf.concat([tail[:, 1:], token[:, None]], axis=1)
        ended = index + 1 >= max_new_tokens
        if end_id is not None:
            ended |= token == end_id
        done = done | ended | _ends_with(tail, stop_ids)
        return index + 1, logits[:, 0], cache, tokens, experts, tail, done

    _, _, _, tokens, experts, _, _ = tf.while_loop(
        lambda index, *state: (index < steps) & ~tf.reduce_all(state[-1]),
        step,
        [tf.constant(0), next_logits, cache, tokens, experts, tail, done],
    )
    return {
        "token_ids": tokens[:, :width],
        "num_tokens": tf.reduce_sum(tf.cast(tokens >= 0, tf.int32), axis=1),
        "expert": experts[:, :width],
    }


def generate(
    decoder,
    prompt_ids,
    max_new_tokens,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    end_id=None,
    stop_ids=(),
    suppressed_ids=(),
):
    """Eager convenience over `generate_tokens` for lists of ids.

    Args:
        decoder: a `CachedDecoder`.
        prompt_ids: a list of prompts, each a list of ints (>= 1 token).
        max_new_tokens: an int; prompt plus new tokens must fit the context.
        stop_ids: a stop sequence of token ids (e.g. two newlines), or ().
        The rest as `generate_tokens`, one value for every row.

    Returns:
        A list of lists: each prompt followed by its new tokens.
    """
    length = decoder.context_length
    longest = max(len(ids) for ids in prompt_ids)
    if min(len(ids) for ids in prompt_ids) < 1 or longest + max_new_tokens > length:
        raise ValueError(
            f"Each prompt needs >= 1 token, and prompt plus max_new_tokens must fit "
            f"the model's {length} positions. Received a longest prompt of "
            f"{longest} tokens and max_new_tokens={max_new_tokens}."
        )
    if len(stop_ids) > STOP_SEQUENCE_LENGTH:
        raise ValueError(
            f"A stop sequence may hold at most {STOP_SEQUENCE_LENGTH} tokens. "
            f"Received {len(stop_ids)}: {list(stop_ids)}"
        )
    rows = len(prompt_ids)
    padded = np.zeros((rows, length), np.int32)
    for row, ids in enumerate(prompt_ids):
        padded[row, : len(ids)] = ids
    stop = np.full((rows, STOP_SEQUENCE_LENGTH), -1, np.int32)
    if len(stop_ids):
        stop[:, -len(stop_ids) :] = stop_ids

    def column(value, dtype):
        return tf.fill([rows], tf.constant(value, dtype))

    out = _compiled(decoder, end_id, tuple(suppressed_ids))(
        tf.constant(padded),
        tf.constant([len(ids) for ids in prompt_ids], tf.int32),
        column(max_new_tokens, tf.int32),
        column(temperature, tf.float32),
        column(top_k, tf.int32),
        column(top_p, tf.float32),
        column(seed, tf.int32),
        tf.constant(stop),
    )
    new = out["token_ids"].numpy()
    return [
        list(ids) + [int(t) for t in new[row] if t >= 0]
        for row, ids in enumerate(prompt_ids)
    ]


# Traced functions per decoder and options, dropped with their decoder.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(decoder, end_id, suppressed_ids):
    """One traced `generate_tokens` per decoder and options."""
    functions = _COMPILED.setdefault(decoder, {})
    key = (end_id, suppressed_ids)
    if key not in functions:

        @tf.function
        def run(*args):
            return generate_tokens(
                decoder, *args[:7], end_id, args[7], suppressed_ids=suppressed_ids
            )

        functions[key] = run
    return functions[key]
