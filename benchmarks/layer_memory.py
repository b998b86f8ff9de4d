"""Peak memory of one SwitchFFN training step: dropless vs capacity 1.0.

How to run (from the repository root):

    .venv/bin/python benchmarks/layer_memory.py                  # 4096 tokens, N=8 32
    .venv/bin/python benchmarks/layer_memory.py --tokens 8192 --experts 8

Each configuration runs in a fresh process (the allocator keeps freed memory,
so one process would flatter whichever runs later): build the layer, trace
and run the step of `layer_speed.py` once, then reset the kernel's peak-RSS
counter (`/proc/self/clear_refs` = 5, Linux) and run `--steps` more. The
figure is the peak RSS above the RSS before those steps: activations,
gradients and temporaries of a step, not the weights. Issue 11's target:
dropless <= 1.2x the capacity-1.0 gather step.
"""

import argparse
import gc
import json
import subprocess
import sys
from types import SimpleNamespace

CONFIGS = ("dense", "gather", "sorted", "dropless")
TARGET = 1.2  # dropless / gather at capacity 1.0


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(impl, tokens, num_experts, steps):
    """Runs in the child: the step's peak RSS increase in MiB."""
    import tensorflow as tf
    from layer_speed import HIDDEN_DIM, SEQUENCE_LENGTH
    from speed_worker import dense_candidate, make_train_step, switch_candidate

    if impl == "dense":
        candidate = dense_candidate(tokens, "float32")
    else:
        inputs = tf.random.normal(
            [tokens // SEQUENCE_LENGTH, SEQUENCE_LENGTH, HIDDEN_DIM]
        )
        factor = None if impl == "dropless" else 1.0
        args = SimpleNamespace(einsum_group_size=SEQUENCE_LENGTH)
        candidate = switch_candidate(impl, num_experts, factor, inputs, "float32", args)
    candidate.layer(candidate.inputs, training=True)
    step = make_train_step(candidate.layer, jit_compile=False)
    step(candidate.inputs, candidate.output_gradient)
    gc.collect()
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # peak RSS := current RSS
    for _ in range(steps):
        step(candidate.inputs, candidate.output_gradient)
    return (status_kib("VmHWM") - before) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, num_experts = args.child[0], int(args.child[1])
        print(json.dumps(measure(impl, args.tokens, num_experts, args.steps)))
        return
    print("Command:", " ".join(sys.argv))
    print(f"{'N':>4} {'config':<9} {'step peak MiB':>14} {'x gather cf1.0':>15}")
    for num_experts in args.experts:
        peaks = {}
        for impl in CONFIGS:
            command = [sys.executable, __file__, "--tokens", str(args.tokens)]
            command += ["--steps", str(args.steps), "--child", impl, str(num_experts)]
            output = subprocess.run(
                command, capture_output=True, text=True, check=True
            ).stdout
            peaks[impl] = json.loads(output.strip().splitlines()[-1])
        for impl in CONFIGS:
            print(
                f"{num_experts:>4} {impl:<9} {peaks[impl]:>14.1f} "
                f"{peaks[impl] / peaks['gather']:>15.2f}"
            )
        verdict = "met" if peaks["dropless"] <= TARGET * peaks["gather"] else "MISSED"
        print(f"     dropless <= {TARGET} x gather cf 1.0: {verdict}")


if __name__ == "__main__":
    main()
