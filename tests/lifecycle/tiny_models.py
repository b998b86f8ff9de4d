"""Small language models for the lifecycle tests."""

import numpy as np

from tf_switch.models import SwitchLanguageModel, get_preset

VOCAB = 50
LENGTH = 12


def small_config(**changes):
    fields = {
        "vocab_size": VOCAB,
        "sequence_length": LENGTH,
        "hidden_dim": 16,
        "intermediate_dim": 32,
        "num_layers": 4,
        "num_heads": 2,
        "num_experts": 4,
        "dropout": 0.0,
        "switch_options": {"group_size": 24},
    }
    return get_preset("tiny", **{**fields, **changes})


def dense_model(**changes):
    return SwitchLanguageModel(small_config(**changes).dense_twin())


def switch_model(**changes):
    return SwitchLanguageModel(small_config(**changes))


def token_ids(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, VOCAB, size=(batch, LENGTH)).astype("int32")


def max_difference(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
