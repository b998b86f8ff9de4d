"""Training step time, data-parallel over D devices vs one, same global batch.

    python benchmarks/data_parallel_speed.py                  # D = 1, 2 logical CPUs
    python benchmarks/data_parallel_speed.py --devices 1 2 4 --steps 30
    python benchmarks/data_parallel_speed.py --gpus           # all local GPUs vs one

For each D, a fresh process (logical devices are fixed when TensorFlow starts)
trains the `tiny` Switch LM with `model.fit` under a MirroredStrategy over D
devices (D = 1: the default strategy) on the same global batch, and reports
the median step time after a warm-up epoch. The ratio D / 1 is printed side by
side. On a 2-core CPU, logical devices share the same cores, so this measures
the strategy's overhead, not a speed-up; on GPUs it is the scaling.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HARD_TIMEOUT_SECONDS = 900


def measure(devices, steps, batch_size, use_gpus):
    """Median seconds per training step with `devices` replicas."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_switch.distribute import split_cpu
    from tf_switch.models import SwitchLanguageModel, get_preset

    if use_gpus:
        names = [d.name for d in tf.config.list_logical_devices("GPU")][:devices]
    else:
        names = split_cpu(devices)
    strategy = (
        tf.distribute.MirroredStrategy(names)
        if devices > 1
        else tf.distribute.get_strategy()
    )
    config = get_preset("tiny", vocab_size=2000, dropout=0.0)
    tokens = np.random.default_rng(0).integers(
        5, 2000, size=(batch_size * steps, config.sequence_length + 1)
    )
    dataset = tf.data.Dataset.from_tensor_slices(
        (tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32))
    ).batch(batch_size, drop_remainder=True)
    with strategy.scope():
        model = SwitchLanguageModel(config)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    times = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: times.append(-time.perf_counter()),
        on_train_batch_end=lambda batch, logs: times.__setitem__(
            -1, times[-1] + time.perf_counter()
        ),
    )
    model.fit(dataset.take(3), epochs=1, verbose=0)  # trace and warm up
    model.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--gpus", action="store_true", help="replicas on GPUs")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        seconds = measure(args.worker, args.steps, args.batch_size, args.gpus)
        print(json.dumps({"devices": args.worker, "step_seconds": seconds}))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for devices in args.devices:
        command = [sys.executable, os.path.abspath(__file__), "--worker", str(devices)]
        command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        command += ["--gpus"] if args.gpus else []
        output = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"},
            timeout=HARD_TIMEOUT_SECONDS,
        ).stdout
        results[devices] = json.loads(output.strip().splitlines()[-1])["step_seconds"]
    kind = "GPUs" if args.gpus else "logical CPUs"
    print(f"tiny Switch LM, global batch {args.batch_size}, {kind}")
    print(f"{'devices':>8} {'ms/step':>9} {'vs 1':>6}")
    for devices, seconds in results.items():
        ratio = seconds / results[args.devices[0]]
        print(f"{devices:>8} {1000 * seconds:>9.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
