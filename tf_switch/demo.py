"""A one-minute tour of the Switch layers: `python -m tf_switch.demo`.

Trains a small causal model (token embedding, two SwitchBlocks, output
projection) on a synthetic sequence task with `model.fit`, next to its dense twin
with the same FLOPs per token, and prints the routing metrics that `fit` logs.
The main job, a Switch language model on a real corpus, replaces this demo.
"""

import argparse

import keras
import numpy as np

from tf_switch import SwitchBlock

VOCAB_SIZE = 64
SEQUENCE_LENGTH = 32
HIDDEN_DIM = 64


def build_model(num_experts):
    """A causal two-block model; `num_experts=None` gives the dense twin."""
    tokens = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB_SIZE, HIDDEN_DIM)(tokens)
    for i in range(2):
        x = SwitchBlock(
            num_heads=4,
            intermediate_dim=128,
            num_experts=num_experts,
            causal=True,
            # Groups of 16 sequences: capacity per group is coarse with
            # few tokens, and one sequence alone drops many more.
            switch_options=(
                {"group_size": 16 * SEQUENCE_LENGTH, "per_expert_metrics": False}
                if num_experts
                else None
            ),
            name=f"block_{i}",
        )(x)
    logits = keras.layers.Dense(VOCAB_SIZE)(keras.layers.LayerNormalization()(x))
    return keras.Model(tokens, logits)


def sequence_task(num_sequences, seed):
    """Next-token pairs of sequences x[t+1] = (5 x[t] + 3) mod V, random start."""
    rng = np.random.default_rng(seed)
    sequences = np.empty((num_sequences, SEQUENCE_LENGTH + 1), dtype="int32")
    sequences[:, 0] = rng.integers(0, VOCAB_SIZE, size=num_sequences)
    for t in range(SEQUENCE_LENGTH):
        sequences[:, t + 1] = (5 * sequences[:, t] + 3) % VOCAB_SIZE
    return sequences[:, :-1], sequences[:, 1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, y = sequence_task(2048, seed=0)
    for name, num_experts in (("switch", args.experts), ("dense twin", None)):
        model = build_model(num_experts)
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        print(f"\n== {name}: {model.count_params():,} parameters ==")
        history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=2)
        final = {k: v[-1] for k, v in history.history.items()}
        print(f"{name} final loss: {final['loss']:.3f}")
        for key, value in sorted(final.items()):
            if "/" in key and "expert_" not in key:
                print(f"  {key}: {value:.4f}")


if __name__ == "__main__":
    main()
