"""Training-step speed of `tf_switch.SwitchFFN` against dense, floor and Model Garden.

How to run (from the repository root, with the `bench` extra installed):

    .venv/bin/python benchmarks/layer_speed.py            # default: 4096 tokens,
                                                          # E=8/32/128, fp32, no XLA
    .venv/bin/python benchmarks/layer_speed.py --tokens 4096 --experts 8 \\
        --capacity-factors 1.0 --precision float32 --xla off --rounds 3  # ~1 min
    .venv/bin/python benchmarks/layer_speed.py --tokens 4096 32768 \\
        --experts 8 32 128 --capacity-factors 1.0 1.25 \\
        --precision float32 mixed_bfloat16 --xla off on --rounds 5 \\
        --output benchmarks/raw/all.jsonl                    # the full matrix

What one step is: forward and backward of one layer under `tf.GradientTape`,
gradients with respect to the input and every trainable variable, inside a
`tf.function` (`jit_compile` from `--xla`); no optimizer. The loss is
`sum(outputs * g)` for a fixed random `g`, plus the layer's auxiliary losses.

What is compared, all top-1 with ReLU experts of hidden 512 -> 2048 -> 512,
on inputs `[tokens / 512, 512, 512]`:

- `dense`: `ExpertFFN(num_experts=1)` on the tokens as `[1, tokens, 512]`, a
  dense FFN with the FLOPs per token of one expert (same code and init).
- `floor`: `ExpertFFN(num_experts=N)` alone on `[N, ceil(c * tokens / N), 512]`,
  the experts' work with no routing at all.
- `gather`: `SwitchFFN(dispatch="gather")`, one group of all the tokens.
- `einsum`: `SwitchFFN(dispatch="einsum")`, groups of 512 tokens.
- `mg`: TF Model Garden's `MoeLayer` + `FeedForwardExperts` with the top-1
  tokens-choose router in `model_garden_switch.py`, groups of 512 tokens
  (`examples_per_group=1`).

Protocol: one worker process per (tokens, precision), so that each table's
ratios come from one process; `mixed_bfloat16` is set as the Keras (and
tf_keras) global policy before any layer is built. Inside a worker the layers
are built one expert count at a time (a "block": dense, floor and every
implementation and capacity factor for that N, both XLA settings), because all
of N=128 at once is already 7 x 1.07 GB of fp32 weights. Every step function
is warmed up, then timed round-robin in a new shuffled order each round. We
report the best wall time (the statistic least hurt by a noisy shared
machine) and the median process CPU time; ratios are against the dense FFN
and the floor of the same block.

Expected run time on 2 cores (fp32, no XLA, 5 rounds; bf16 is about half,
XLA about the same plus compilation): 4096 tokens, E=8/32/128, both
capacity factors: ~4 min; 32768 tokens: ~8x that (~30 min at 5 rounds).
"""

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from speed_report import (
    IMPLEMENTATIONS,
    add_ratios,
    print_bfloat16_speedups,
    print_table,
    print_targets,
)

SEQUENCE_LENGTH = 512
HIDDEN_DIM = 512
INTERMEDIATE_DIM = 2048
PRECISIONS = ("float32", "mixed_bfloat16")
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument(
        "--capacity-factors", type=float, nargs="+", default=[1.0, 1.25]
    )
    parser.add_argument(
        "--precision", nargs="+", choices=PRECISIONS, default=["float32"]
    )
    parser.add_argument(
        "--xla",
        nargs="+",
        choices=("off", "on", "both"),
        default=["off"],
        help="jit_compile off, on, or both (measured in the same process)",
    )
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each")
    parser.add_argument(
        "--einsum-group-size", type=int, default=512, help="tokens per group"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="append results here as JSON lines")
    parser.add_argument("--worker-results", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.impls = list(args.impls or IMPLEMENTATIONS)
    args.xla = xla_settings(args.xla)
    check_args(parser, args)
    return args


def xla_settings(values):
    """`["both"]` -> `["off", "on"]`, without repeats, in the order given."""
    settings = []
    for value in values:
        for setting in ("off", "on") if value == "both" else (value,):
            if setting not in settings:
                settings.append(setting)
    return settings


def check_args(parser, args):
    for tokens in args.tokens:
        if tokens % SEQUENCE_LENGTH or tokens % args.einsum_group_size:
            parser.error(
                f"--tokens {tokens}: expected a multiple of the sequence length "
                f"{SEQUENCE_LENGTH} and of --einsum-group-size "
                f"{args.einsum_group_size}."
            )
    if min(args.experts) < 2:
        parser.error(f"--experts {args.experts}: each must be at least 2.")
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be at least 1.")


def worker_command(args, tokens, precision, results_path):
    """The command line of the worker for one (tokens, precision)."""
    command = [sys.executable, os.path.abspath(__file__)]
    command += ["--tokens", str(tokens), "--precision", precision]
    command += ["--experts", *map(str, args.experts)]
    command += ["--capacity-factors", *map(str, args.capacity_factors)]
    command += ["--xla", *args.xla, "--impls", *args.impls]
    command += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    command += ["--einsum-group-size", str(args.einsum_group_size)]
    command += ["--seed", str(args.seed), "--worker-results", results_path]
    return command


# ---------------------------------------------------------------- machine


def cpu_model_name():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown (no lscpu)"
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def memory_gib():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_description():
    """What the numbers were measured on, as a dict."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model_name(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib(), 1),
        "python": sys.version.split()[0],
        "tensorflow": package_version("tensorflow"),
        "keras": package_version("keras"),
        "tf_keras": package_version("tf-keras"),
        "tf_models_official": package_version("tf-models-official"),
        "tf_switch": package_version("tf-switch"),
    }


def print_header(machine, command):
    print(f"Command: {command}")
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), {machine['memory_gib']} GiB; "
        f"avx512_bf16: {'yes' if machine['avx512_bf16'] else 'no'}, "
        f"amx_bf16: {'yes' if machine['amx_bf16'] else 'no'}"
    )
    print(
        f"Versions: Python {machine['python']}, TensorFlow {machine['tensorflow']}"
        f", Keras {machine['keras']}, tf_keras {machine['tf_keras']}, "
        f"tf-models-official {machine['tf_models_official']}, "
        f"tf-switch {machine['tf_switch']}"
    )
    print(
        "Step: fwd+bwd (GradientTape, grads of input and all trainable "
        "variables, no optimizer); best-of-N wall time, median process CPU time."
    )
    sys.stdout.flush()


# ---------------------------------------------------------------- worker: layers


@dataclasses.dataclass
class Candidate:
    """One layer on one input, to be timed."""

    impl: str
    num_experts: int | None
    capacity_factor: float | None
    slots_per_expert: int | None
    layer: object
    inputs: object
    output_gradient: object


@dataclasses.dataclass
class Measurement:
    """A candidate's train step under one XLA setting, and its timings."""

    candidate: Candidate
    xla: str
    train_step: object
    wall_seconds: list = dataclasses.field(default_factory=list)
    cpu_seconds: list = dataclasses.field(default_factory=list)


def set_precision(precision, impls):
    """Sets the global policy that every layer built afterwards captures."""
    import keras

    keras.mixed_precision.set_dtype_policy(precision)
    if "mg" in impls:
        import tf_keras

        tf_keras.mixed_precision.set_global_policy(precision)


def random_inputs(shape, precision):
    """Inputs in the compute dtype, as the previous layer would deliver them."""
    import tensorflow as tf

    values = tf.random.normal(shape)
    return tf.cast(values, COMPUTE_DTYPES[precision])


def candidate_for(impl, layer, inputs, precision, num_experts=None, **kwargs):
    return Candidate(
        impl=impl,
        num_experts=num_experts,
        layer=layer,
        inputs=inputs,
        output_gradient=random_inputs(inputs.shape, precision),
        **{"capacity_factor": None, "slots_per_expert": None, **kwargs},
    )


def dense_candidate(tokens, precision):
    import tf_switch

    layer = tf_switch.ExpertFFN(
        num_experts=1, intermediate_dim=INTERMEDIATE_DIM, name="dense_ffn"
    )
    inputs = random_inputs([1, tokens, HIDDEN_DIM], precision)
    return candidate_for("dense", layer, inputs, precision)


def floor_candidates(num_experts, tokens, capacity_factors, precision):
    """One `ExpertFFN(N)`, timed on each capacity factor's `[N, C, d]` input."""
    import tf_switch

    layer = tf_switch.ExpertFFN(
        num_experts=num_experts, intermediate_dim=INTERMEDIATE_DIM, name="floor"
    )
    candidates = []
    for capacity_factor in capacity_factors:
        slots = math.ceil(capacity_factor * tokens / num_experts)
        inputs = random_inputs([num_experts, slots, HIDDEN_DIM], precision)
        candidates.append(
            candidate_for(
                "floor",
                layer,
                inputs,
                precision,
                num_experts,
                capacity_factor=capacity_factor,
                slots_per_expert=slots,
            )
        )
    return candidates


def switch_candidate(impl, num_experts, capacity_factor, inputs, precision, args):
    """`SwitchFFN` with gather (one group of all tokens) or einsum dispatch."""
    import tf_switch

    tokens = math.prod(inputs.shape[:-1])
    group_size = tokens if impl == "gather" else args.einsum_group_size
    layer = tf_switch.SwitchFFN(
        num_experts=num_experts,
        intermediate_dim=INTERMEDIATE_DIM,
        activation="relu",
        group_size=group_size,
        dispatch=impl,
        capacity_factor=capacity_factor,
        name=f"switch_{impl}",
    )
    capacity = layer.router.expert_capacity(group_size, training=True)
    slots = tokens // group_size * capacity
    return candidate_for(
        impl,
        layer,
        inputs,
        precision,
        num_experts,
        capacity_factor=capacity_factor,
        slots_per_expert=slots,
    )


def model_garden_candidate(num_experts, capacity_factor, inputs, precision):
    import model_garden_switch

    layer = model_garden_switch.model_garden_switch_layer(
        num_experts, INTERMEDIATE_DIM, capacity_factor, examples_per_group=1.0
    )
    num_groups = inputs.shape[0]  # one sequence of SEQUENCE_LENGTH per group
    capacity = model_garden_switch.expert_capacity(
        SEQUENCE_LENGTH, num_experts, capacity_factor
    )
    return candidate_for(
        "mg",
        layer,
        inputs,
        precision,
        num_experts,
        capacity_factor=capacity_factor,
        slots_per_expert=num_groups * capacity,
    )


def block_candidates(num_experts, tokens, precision, args):
    """Floor and every routed implementation for N experts (dense is shared)."""
    candidates = []
    if "floor" in args.impls:
        candidates += floor_candidates(
            num_experts, tokens, args.capacity_factors, precision
        )
    token_inputs = random_inputs(
        [tokens // SEQUENCE_LENGTH, SEQUENCE_LENGTH, HIDDEN_DIM], precision
    )
    for capacity_factor in args.capacity_factors:
        for impl in ("gather", "einsum"):
            if impl in args.impls:
                candidates.append(
                    switch_candidate(
                        impl,
                        num_experts,
                        capacity_factor,
                        token_inputs,
                        precision,
                        args,
                    )
                )
        if "mg" in args.impls:
            candidates.append(
                model_garden_candidate(
                    num_experts, capacity_factor, token_inputs, precision
                )
            )
    return candidates


def build_and_check_precision(candidate, precision):
    """Builds the layer with one eager call and checks it runs in `precision`.

    Layers capture the global policy when constructed (Model Garden's experts
    partly when built), so a wrong policy would show here.
    """
    outputs = candidate.layer(candidate.inputs, training=True)
    expected = COMPUTE_DTYPES[precision]
    variable_dtypes = {v.dtype for v in candidate.layer.trainable_variables}
    variable_dtypes = {getattr(dtype, "name", dtype) for dtype in variable_dtypes}
    if outputs.dtype.name != expected or variable_dtypes != {"float32"}:
        raise RuntimeError(
            f"{candidate.impl} under {precision}: outputs {outputs.dtype.name}, "
            f"variables {sorted(variable_dtypes)}; expected outputs {expected} "
            "and float32 variables."
        )


# ---------------------------------------------------------------- worker: timing


def make_train_step(layer, jit_compile):
    """fwd+bwd of `layer`: gradients of the input and all trainable variables."""
    import tensorflow as tf

    variables = list(layer.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(inputs, output_gradient):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.cast(tf.reduce_sum(outputs * output_gradient), tf.float32)
            for auxiliary_loss in layer.losses:
                loss += tf.cast(auxiliary_loss, tf.float32)
        # Returned, so that no gradient is pruned from the graph.
        return tape.gradient(loss, [inputs, *variables])

    return train_step


def run_step(measurement):
    """One timed step: (wall seconds, process CPU seconds of all threads)."""
    candidate = measurement.candidate
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    gradients = measurement.train_step(candidate.inputs, candidate.output_gradient)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    if any(gradient is None for gradient in gradients):
        raise RuntimeError(f"{candidate.impl}: a gradient is None.")
    return wall, cpu


def warm_up(measurements, steps):
    for measurement in measurements:
        for _ in range(steps):
            run_step(measurement)


def measure_round_robin(measurements, rounds, rng):
    """Times each measurement once per round, in a new shuffled order."""
    for _ in range(rounds):
        order = list(measurements)
        rng.shuffle(order)
        for measurement in order:
            wall, cpu = run_step(measurement)
            measurement.wall_seconds.append(wall)
            measurement.cpu_seconds.append(cpu)


def measurement_record(measurement, block_experts, tokens, precision):
    candidate = measurement.candidate
    return {
        "tokens": tokens,
        "precision": precision,
        "xla": measurement.xla,
        "block_experts": block_experts,
        "impl": candidate.impl,
        "num_experts": candidate.num_experts,
        "capacity_factor": candidate.capacity_factor,
        "slots_per_expert": candidate.slots_per_expert,
        "best_ms": 1e3 * min(measurement.wall_seconds),
        "median_ms": 1e3 * statistics.median(measurement.wall_seconds),
        "median_cpu_ms": 1e3 * statistics.median(measurement.cpu_seconds),
        "wall_ms": [round(1e3 * s, 2) for s in measurement.wall_seconds],
        "cpu_ms": [round(1e3 * s, 2) for s in measurement.cpu_seconds],
    }


def run_block(num_experts, dense, tokens, precision, args, rng):
    """Builds, warms up and times one expert count; returns its records."""
    started = time.perf_counter()
    candidates = ([dense] if dense else []) + block_candidates(
        num_experts, tokens, precision, args
    )
    for candidate in candidates:
        build_and_check_precision(candidate, precision)
    measurements = [
        Measurement(candidate, xla, make_train_step(candidate.layer, xla == "on"))
        for candidate in candidates
        for xla in args.xla
    ]
    warm_up(measurements, args.warmup)
    warmed_up = time.perf_counter()
    measure_round_robin(measurements, args.rounds, rng)
    finished = time.perf_counter()
    print(
        f"  block N={num_experts}: {len(measurements)} step functions, build + "
        f"warm-up {warmed_up - started:.0f} s, {args.rounds} rounds "
        f"{finished - warmed_up:.0f} s",
        flush=True,
    )
    return [measurement_record(m, num_experts, tokens, precision) for m in measurements]


def run_worker(args):
    """Measures one (tokens, precision); prints its tables, saves its records."""
    import keras

    (tokens,), (precision,) = args.tokens, args.precision
    set_precision(precision, args.impls)
    keras.utils.set_random_seed(args.seed)
    rng = random.Random(args.seed)
    batch = tokens // SEQUENCE_LENGTH
    print(
        f"\n[{tokens} tokens as [{batch}, {SEQUENCE_LENGTH}, {HIDDEN_DIM}], "
        f"{precision}, XLA {'/'.join(args.xla)}; pid {os.getpid()}]",
        flush=True,
    )
    dense = dense_candidate(tokens, precision) if "dense" in args.impls else None
    if dense:
        build_and_check_precision(dense, precision)
    records = []
    for num_experts in args.experts:
        records += run_block(num_experts, dense, tokens, precision, args, rng)
        gc.collect()
    add_ratios(records)
    for xla in args.xla:
        print_table([r for r in records if r["xla"] == xla], args.rounds)
    with open(args.worker_results, "a") as results:
        for record in records:
            results.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- parent


def run_workers(args):
    """Runs one worker per (tokens, precision); returns all their records."""
    environment = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    records = []
    with tempfile.TemporaryDirectory() as directory:
        results_path = os.path.join(directory, "results.jsonl")
        open(results_path, "w").close()
        for tokens in args.tokens:
            for precision in args.precision:
                started = time.perf_counter()
                command = worker_command(args, tokens, precision, results_path)
                returncode = subprocess.run(command, env=environment).returncode
                print(
                    f"[worker {tokens} tokens {precision}: exit {returncode}, "
                    f"{time.perf_counter() - started:.0f} s]",
                    flush=True,
                )
        with open(results_path) as results:
            records = [json.loads(line) for line in results]
    return records


def write_output(path, machine, command, records):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as output:
        meta = {"kind": "run", "command": command, "machine": machine}
        output.write(json.dumps(meta) + "\n")
        for record in records:
            output.write(json.dumps({"kind": "result", **record}) + "\n")


def main():
    args = parse_args()
    if args.worker_results:
        run_worker(args)
        return
    started = time.perf_counter()
    command = shlex.join(sys.orig_argv)
    machine = machine_description()
    print_header(machine, command)
    records = run_workers(args)
    print_bfloat16_speedups(records)
    print_targets(records)
    if args.output:
        write_output(args.output, machine, command, records)
    print(f"\nTotal {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
