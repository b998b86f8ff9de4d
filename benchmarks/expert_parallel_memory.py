"""Per-device expert memory and step time: expert-parallel vs replicated.

    python benchmarks/expert_parallel_memory.py              # D = 1, 2, 4
    python benchmarks/expert_parallel_memory.py --devices 2 4 --steps 20

For each D, a fresh process splits the CPU into D logical devices, builds the
same one-Switch-layer model twice under a `MirroredStrategy` (experts
replicated, then `expert_parallel=True`), and measures on every device the
bytes of the expert weights and of their Adam slots (`per_device_bytes`, from
the variables' per-device components), then the median `model.fit` step time
(per-replica batch fixed, so the global batch grows with D). With D = 1 the
option falls back to the plain layer. Step times on logical CPUs that share
the same cores are a report, not a claim about GPUs or TPUs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NUM_EXPERTS = 8
HIDDEN_DIM = 64
INTERMEDIATE_DIM = 256
SEQUENCE_LENGTH = 64
SEQUENCES_PER_REPLICA = 8
HARD_TIMEOUT_SECONDS = 600


def _model(expert_parallel):
    import keras

    from tf_switch import SwitchFFN

    inputs = keras.Input((SEQUENCE_LENGTH, HIDDEN_DIM))
    ffn = SwitchFFN(
        num_experts=NUM_EXPERTS,
        intermediate_dim=INTERMEDIATE_DIM,
        capacity_factor=1.25,
        expert_parallel=expert_parallel,
        name="ffn",
    )
    outputs = keras.layers.Dense(HIDDEN_DIM, name="head")(ffn(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _expert_slots(model):
    """Adam's moments of the expert weights."""
    experts = model.get_layer("ffn").experts.weights
    names = {variable.path.replace("/", "_") for variable in experts}
    slots = [
        slot
        for slot in model.optimizer.variables
        if slot.name.rsplit("_", 1)[0] in names
    ]
    assert len(slots) == 2 * len(experts), [slot.name for slot in slots]
    return slots


def _step_end_times(model, dataset, steps):
    import keras

    ends = []
    model.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=1,
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
            )
        ],
    )
    return ends


def measure(num_devices, steps):
    """One D: bytes per device and median step time for both kinds of model."""
    import numpy as np
    import tensorflow as tf

    from tf_switch.distribute import split_cpu
    from tf_switch.distribute.expert_parallel import per_device_bytes

    strategy = tf.distribute.MirroredStrategy(split_cpu(num_devices))
    batch = SEQUENCES_PER_REPLICA * num_devices
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(batch, SEQUENCE_LENGTH, HIDDEN_DIM)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors((inputs, inputs)).repeat()
    result = {}
    for name, expert_parallel in (("replicated", False), ("expert_parallel", True)):
        with strategy.scope():
            model = _model(expert_parallel)
            model.optimizer.build(model.trainable_variables)
        devices = strategy.extended.worker_devices
        params = per_device_bytes(model.get_layer("ffn").experts.weights)
        slots = per_device_bytes(_expert_slots(model))
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace
        ends = _step_end_times(model, dataset, steps)
        result[name] = {
            "param_bytes": [params[device] for device in devices],
            "slot_bytes": [slots[device] for device in devices],
            "step_ms": 1000 * statistics.median(np.diff(ends)),
        }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps)))
        return
    print(
        f"{NUM_EXPERTS} experts, hidden {HIDDEN_DIM}, intermediate "
        f"{INTERMEDIATE_DIM}, float32, Adam; {SEQUENCES_PER_REPLICA}x"
        f"{SEQUENCE_LENGTH} tokens per replica; per-device bytes of the expert "
        "weights and of their Adam slots (max over devices)."
    )
    print(
        f"{'D':>2}  {'experts':<16}{'params/device':>14}{'ratio':>7}"
        f"{'slots/device':>14}{'ratio':>7}{'step ms':>9}"
    )
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [root, environment.get("PYTHONPATH")])
    )
    for num_devices in args.devices:
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", str(num_devices)]
            + ["--steps", str(args.steps)],
            capture_output=True,
            text=True,
            timeout=HARD_TIMEOUT_SECONDS,
            env=environment,
        )
        if completed.returncode:
            sys.exit(completed.stderr[-4000:])
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        replicated = result["replicated"]
        for name, row in result.items():
            params, slots = max(row["param_bytes"]), max(row["slot_bytes"])
            param_ratio = params / max(replicated["param_bytes"])
            slot_ratio = slots / max(replicated["slot_bytes"])
            print(
                f"{num_devices:>2}  {name:<16}{params:>14,}{param_ratio:>7.3f}"
                f"{slots:>14,}{slot_ratio:>7.3f}{row['step_ms']:>9.1f}"
            )


if __name__ == "__main__":
    main()
