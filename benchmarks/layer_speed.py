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
- `floor2d`: the same experts as per-expert 2-D matmuls over `[N * C, d]`
  rows sorted by expert (`ExpertFFN(..., expert_sizes=...)`), the layout of
  the sorted dispatch, with no routing.
- `gather`: `SwitchFFN(dispatch="gather")`, one group of all the tokens.
- `einsum`: `SwitchFFN(dispatch="einsum")`, groups of 512 tokens.
- `sorted`: `SwitchFFN(dispatch="sorted")`, one group of all the tokens:
  capacity-limited routing with no padded slots.
- `dropless`: `SwitchFFN(capacity_factor=None)`, one group of all the tokens
  (sorted dispatch; cf shown as "-", ratio "x g1.0" against gather at cf 1.0).
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

Measured run times on this 2-core machine, all impls, E=8/32/128, both
capacity factors: 4096 tokens, float32, 5 rounds: 2.5-5 min (E=128 is half of
it); mixed_bfloat16: ~2 min; XLA on and off for E=8/32: ~2.5 min; 32768
tokens, float32, 3 rounds: ~11 min. The machine is shared: check the `others`
column and the NOISY flags, and rerun a block whose wall and CPU ratios differ.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from speed_report import (
    IMPLEMENTATIONS,
    add_ratios,
    print_bfloat16_speedups,
    print_sorted_targets,
    print_table,
    print_targets,
)

SEQUENCE_LENGTH = 512
HIDDEN_DIM = 512
INTERMEDIATE_DIM = 2048
PRECISIONS = ("float32", "mixed_bfloat16")


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
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "speed_worker.py")
    command = [sys.executable, worker]
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


def tf_switch_revision(source_files=None):
    """The git commit of `tf_switch`; with `source_files`, also their state.

    A worker passes the files of the `tf_switch` modules it imported: whether
    they differ from the commit, and a hash of their text, tell apart runs of
    different code while the package is being edited.
    """
    package_dir = os.path.dirname(importlib.util.find_spec("tf_switch").origin)
    git = ["git", "-C", package_dir]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--", *(source_files or ["."])],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit, changes = "", ""
    revision = f"{commit or 'no git'}{' + uncommitted changes' if changes else ''}"
    if source_files:
        digest = hashlib.sha1()
        for path in sorted(source_files):
            with open(path, "rb") as source:
                digest.update(os.path.basename(path).encode() + source.read())
        revision += f", layer sources {digest.hexdigest()[:10]}"
    return revision


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
        "tf_switch_revision": tf_switch_revision(),
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
        f"tf-switch {machine['tf_switch']} ({machine['tf_switch_revision']})"
    )
    print(
        "Step: fwd+bwd (GradientTape, grads of input and all trainable "
        "variables, no optimizer); best-of-N wall time, median process CPU time."
    )
    sys.stdout.flush()


# ---------------------------------------------------------------- parent


def run_workers(args):
    """Runs one worker per (tokens, precision); returns all their records.

    A worker prints its own tables; for one that failed, the blocks it
    finished are printed here.
    """
    environment = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    records = []
    for tokens in args.tokens:
        for precision in args.precision:
            started = time.perf_counter()
            worker_records, returncode = run_worker(
                args, tokens, precision, environment
            )
            print(
                f"[worker {tokens} tokens {precision}: exit {returncode}, "
                f"{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
            add_ratios(worker_records)
            if returncode:
                for xla in args.xla:
                    print_table([r for r in worker_records if r["xla"] == xla])
            records += worker_records
    return records


def run_worker(args, tokens, precision, environment):
    """(records, exit status) of the worker for one (tokens, precision)."""
    with tempfile.TemporaryDirectory() as directory:
        results_path = os.path.join(directory, "results.jsonl")
        open(results_path, "w").close()
        command = worker_command(args, tokens, precision, results_path)
        returncode = subprocess.run(command, env=environment).returncode
        with open(results_path) as results:
            return [json.loads(line) for line in results], returncode


def write_output(path, machine, command, records):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as output:
        meta = {"kind": "run", "command": command, "machine": machine}
        output.write(json.dumps(meta) + "\n")
        for record in records:
            output.write(json.dumps({"kind": "result", **record}) + "\n")


def main():
    args = parse_args()
    started = time.perf_counter()
    command = shlex.join(sys.orig_argv)
    machine = machine_description()
    print_header(machine, command)
    records = run_workers(args)
    revisions = sorted({r["tf_switch_revision"] for r in records})
    if len(revisions) > 1:
        print(f"\nWARNING: tf_switch changed during the run: {revisions}")
    print_bfloat16_speedups(records)
    print_targets(records)
    print_sorted_targets(records)
    if args.output:
        write_output(args.output, machine, command, records)
    print(f"\nTotal {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
