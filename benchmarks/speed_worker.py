"""The worker of `layer_speed.py`: times one (tokens, precision) in one process.

Started by `layer_speed.py`, once per (tokens, precision), with the same
arguments plus `--worker-results PATH`, where it appends one JSON line per step
function (see `speed_report`). It prints its own tables when done.
"""

import dataclasses
import gc
import json
import math
import os
import random
import statistics
import sys
import time

import keras
import tensorflow as tf
from layer_speed import (
    HIDDEN_DIM,
    INTERMEDIATE_DIM,
    SEQUENCE_LENGTH,
    parse_args,
    tf_switch_revision,
)
from speed_report import add_ratios, print_table

import tf_switch

COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/stat's unit, per second


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
    other_cores: list = dataclasses.field(default_factory=list)


def set_precision(precision, impls):
    """Sets the global policy that every layer built afterwards captures."""
    keras.mixed_precision.set_dtype_policy(precision)
    if "mg" in impls:
        import tf_keras

        tf_keras.mixed_precision.set_global_policy(precision)


def random_inputs(shape, precision):
    """Inputs in the compute dtype, as the previous layer would deliver them."""
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
    layer = tf_switch.ExpertFFN(
        num_experts=1, intermediate_dim=INTERMEDIATE_DIM, name="dense_ffn"
    )
    inputs = random_inputs([1, tokens, HIDDEN_DIM], precision)
    return candidate_for("dense", layer, inputs, precision)


def floor_candidates(num_experts, tokens, capacity_factors, precision):
    """One `ExpertFFN(N)`, timed on each capacity factor's `[N, C, d]` input."""
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


class SortedFloor(keras.layers.Layer):
    """The experts alone as per-expert 2-D matmuls over `[N * C, d]` rows sorted
    by expert, C each: the floor of the sorted dispatch's expert layout."""

    def __init__(self, num_experts, slots, **kwargs):
        super().__init__(**kwargs)
        self.experts = tf_switch.ExpertFFN(
            num_experts=num_experts, intermediate_dim=INTERMEDIATE_DIM
        )
        self.expert_sizes = tf.fill([num_experts], slots)

    def call(self, inputs, training=None):
        return self.experts(inputs, expert_sizes=self.expert_sizes, training=training)


def floor2d_candidates(num_experts, tokens, capacity_factors, precision):
    """`SortedFloor(N)` on each capacity factor's `[N * C, d]` rows."""
    candidates = []
    for capacity_factor in capacity_factors:
        slots = math.ceil(capacity_factor * tokens / num_experts)
        layer = SortedFloor(num_experts, slots, name="floor2d")
        inputs = random_inputs([num_experts * slots, HIDDEN_DIM], precision)
        candidates.append(
            candidate_for(
                "floor2d",
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
    """`SwitchFFN` with gather or sorted dispatch (one group of all tokens),
    einsum dispatch (groups of `--einsum-group-size`), or dropless routing
    (`impl="dropless"`: capacity_factor None, which dispatches sorted)."""
    tokens = math.prod(inputs.shape[:-1])
    group_size = args.einsum_group_size if impl == "einsum" else tokens
    layer = tf_switch.SwitchFFN(
        num_experts=num_experts,
        intermediate_dim=INTERMEDIATE_DIM,
        activation="relu",
        group_size=group_size,
        dispatch="sorted" if impl == "dropless" else impl,
        capacity_factor=capacity_factor,
        name=f"switch_{impl}",
    )
    capacity = layer.router.expert_capacity(group_size, training=True)
    slots = tokens // group_size * capacity
    if impl in ("sorted", "dropless"):  # rows computed: the routed tokens
        slots = min(slots, tokens // num_experts)
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
    if "floor2d" in args.impls:
        candidates += floor2d_candidates(
            num_experts, tokens, args.capacity_factors, precision
        )
    token_inputs = random_inputs(
        [tokens // SEQUENCE_LENGTH, SEQUENCE_LENGTH, HIDDEN_DIM], precision
    )
    if "dropless" in args.impls:
        candidates.append(
            switch_candidate(
                "dropless", num_experts, None, token_inputs, precision, args
            )
        )
    for capacity_factor in args.capacity_factors:
        for impl in ("gather", "einsum", "sorted"):
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


def make_train_step(layer, jit_compile):
    """fwd+bwd of `layer`: gradients of the input and all trainable variables."""
    variables = list(layer.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(inputs, output_gradient):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.cast(tf.reduce_sum(outputs * output_gradient), tf.float32)
            for auxiliary_loss in layer.losses:
                loss += tf.cast(auxiliary_loss, tf.float32)
        # The loss is returned too: otherwise the graph optimizer prunes the
        # forward matmul that makes the outputs, which the gradients of
        # sum(outputs * g) do not need for a dense layer but do need for a
        # routed one (the gate's gradient is the expert output), and the
        # dense and floor references would do one matmul less than ours.
        return loss, tape.gradient(loss, [inputs, *variables])

    return train_step


def busy_cpu_seconds():
    """CPU seconds the whole machine has been busy (incl. steal), or None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / CLOCK_TICKS


def run_step(measurement):
    """One timed step: wall seconds, process CPU seconds (all threads), and
    the cores that other processes (and the hypervisor) kept busy meanwhile."""
    candidate = measurement.candidate
    busy_start = busy_cpu_seconds()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    _, gradients = measurement.train_step(candidate.inputs, candidate.output_gradient)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    busy_end = busy_cpu_seconds()
    if any(gradient is None for gradient in gradients):
        raise RuntimeError(f"{candidate.impl}: a gradient is None.")
    others = None if busy_start is None else (busy_end - busy_start - cpu) / wall
    return wall, cpu, others


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
            wall, cpu, others = run_step(measurement)
            measurement.wall_seconds.append(wall)
            measurement.cpu_seconds.append(cpu)
            if others is not None:
                measurement.other_cores.append(max(others, 0.0))


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
        "median_other_cores": (
            statistics.median(measurement.other_cores)
            if measurement.other_cores
            else None
        ),
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


def imported_tf_switch_files():
    """The source files of the `tf_switch` modules this process has imported."""
    return [
        module.__file__
        for name, module in sys.modules.items()
        if name.split(".")[0] == "tf_switch" and getattr(module, "__file__", None)
    ]


def run_worker(args):
    """Measures one (tokens, precision); prints its tables, saves its records."""
    (tokens,), (precision,) = args.tokens, args.precision
    revision = tf_switch_revision(imported_tf_switch_files())
    set_precision(precision, args.impls)
    keras.utils.set_random_seed(args.seed)
    rng = random.Random(args.seed)
    batch = tokens // SEQUENCE_LENGTH
    print(
        f"\n[{tokens} tokens as [{batch}, {SEQUENCE_LENGTH}, {HIDDEN_DIM}], "
        f"{precision}, XLA {'/'.join(args.xla)}; tf_switch {revision}; pid "
        f"{os.getpid()}]",
        flush=True,
    )
    dense = dense_candidate(tokens, precision) if "dense" in args.impls else None
    if dense:
        build_and_check_precision(dense, precision)
    records = []
    for num_experts in args.experts:
        block_records = run_block(num_experts, dense, tokens, precision, args, rng)
        for record in block_records:
            record["tf_switch_revision"] = revision
        save_records(args.worker_results, block_records)  # kept if a later block dies
        records += block_records
        gc.collect()
    add_ratios(records)
    for xla in args.xla:
        print_table([r for r in records if r["xla"] == xla])


def save_records(path, records):
    with open(path, "a") as results:
        for record in records:
            results.write(json.dumps(record) + "\n")


def main():
    args = parse_args()
    if not args.worker_results:
        raise SystemExit("Run benchmarks/layer_speed.py; it starts this worker.")
    tf.get_logger().setLevel("ERROR")  # one tf.function per step: retrace notes
    run_worker(args)


if __name__ == "__main__":
    main()
