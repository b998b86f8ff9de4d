"""Trains one tiny Switch LM twice in one process, on one device and data-
parallel over logical CPUs, and prints both runs as JSON.

    python -m tests.distribute.mirrored_worker --devices 2

Logical devices must be configured before TensorFlow starts, hence a process
of its own per configuration.
"""

import argparse
import json

from tf_switch.distribute import split_cpu


def run(devices, steps, group_size):
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_switch.models import SwitchLanguageModel, get_preset

    config = get_preset(
        "tiny",
        vocab_size=64,
        sequence_length=16,
        hidden_dim=32,
        intermediate_dim=64,
        num_layers=2,
        num_heads=2,
        num_experts=4,
        dropout=0.0,
        switch_options={"group_size": group_size, "capacity_factor": 1.0},
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 64, size=(8 * steps, 17)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((tokens[:, :-1], tokens[:, 1:]))
    dataset = dataset.batch(8, drop_remainder=True)

    def train(strategy, weights):
        with strategy.scope():
            model = SwitchLanguageModel(config)
            model.set_weights(weights)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        rows = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: rows.append(
                {key: float(value) for key, value in logs.items()}
            )
        )
        model.fit(dataset, epochs=1, verbose=0, callbacks=[record])
        return model, rows

    keras.utils.set_random_seed(0)
    initial = SwitchLanguageModel(config).get_weights()
    single, single_logs = train(tf.distribute.get_strategy(), initial)
    mirrored, mirrored_logs = train(tf.distribute.MirroredStrategy(devices), initial)
    return {
        "replicas": len(devices),
        "single": single_logs,
        "mirrored": mirrored_logs,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True)
        ),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group-size", type=int)
    args = parser.parse_args()
    devices = split_cpu(args.devices)
    print(json.dumps(run(devices, args.steps, args.group_size)))


if __name__ == "__main__":
    main()
