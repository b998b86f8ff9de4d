"""A tiny tokenizer and Switch LM for export and serving tests."""

import numpy as np
import tensorflow as tf

from tests.training.synthetic import synthetic_text
from tf_switch import text
from tf_switch.models import SwitchLanguageModel, get_preset

LENGTH = 12


def tiny_tokenizer():
    vocabulary = text.build_vocabulary([synthetic_text(200)], vocab_size=120)
    return text.WordPieceTokenizer(vocabulary)


def tiny_model(tokenizer, num_layers=2):
    """Two blocks, one of them Switch; training groups span two sequences
    and drop tokens at evaluation, which serving must not inherit."""
    config = get_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        sequence_length=LENGTH,
        hidden_dim=32,
        intermediate_dim=64,
        num_layers=num_layers,
        num_heads=2,
        num_experts=4,
        switch_options={"group_size": 2 * LENGTH, "eval_capacity_factor": 0.5},
    )
    return SwitchLanguageModel(config)


def random_token_ids(rows, length, seed=0):
    """`<int32>[rows, length]` ids in [5, 100), away from the special tokens."""
    rng = np.random.default_rng(seed)
    return rng.integers(5, 100, size=(rows, length)).astype(np.int32)


def run_in_process(loaded, signature, **inputs):
    """A loaded SavedModel's signature on NumPy inputs, as NumPy outputs."""
    outputs = loaded.signatures[signature](
        **{name: tf.constant(value) for name, value in inputs.items()}
    )
    return {name: value.numpy() for name, value in outputs.items()}
