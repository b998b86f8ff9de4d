"""Sampling text from a language model, one token at a time."""

import numpy as np
import tensorflow as tf


def generate_ids(model, prompt_ids, max_new_tokens, temperature=1.0, seed=0, pad_id=0):
    """Extends `prompt_ids` (a list of ints) by sampling from `model`.

    The model takes fixed-length windows: the context is right-padded to the
    window (a causal model never looks at later positions) and slides once it
    is full. `temperature=0` is greedy.
    """
    window = model.input_shape[1]
    rng = np.random.default_rng(seed)

    @tf.function
    def next_logits(ids, position):
        return model(ids, training=False)[0, position]

    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        context = ids[-window:]
        padded = np.full((1, window), pad_id, np.int32)
        padded[0, : len(context)] = context
        logits = next_logits(tf.constant(padded), tf.constant(len(context) - 1))
        logits = np.asarray(logits, np.float64)
        if temperature <= 0:
            token = int(np.argmax(logits))
        else:
            probs = np.exp((logits - logits.max()) / temperature)
            token = int(rng.choice(len(probs), p=probs / probs.sum()))
        ids.append(token)
    return ids
