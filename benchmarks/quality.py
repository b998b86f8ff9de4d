"""Quality per FLOP: Switch configurations against their dense twin, with seeds.

    .venv/bin/python benchmarks/quality.py                       # the default grid
    .venv/bin/python benchmarks/quality.py --configs dense switch-8 --seeds 0 1 \\
        --steps 400 --eval-every 50
    .venv/bin/python benchmarks/quality.py --report-only         # re-analyse runs

Each (configuration, seed) is trained by the project's own job
(`python -m training.train`) in its own process, into `--output/<config>-s<seed>`
(a finished run is not trained again), with validation loss on the same
held-out batches every `--eval-every` steps (`validation_curve.csv`). The
learning rate warms up, then decays as 1/sqrt(step) (T5 and the paper's
pre-training schedule), which does not depend on where a run stops, so
steps-to-quality can be read off any point of a curve.

From the curves (arithmetic in `training/curves.py`, unit-tested):
- the final validation loss per configuration, mean and spread over seeds;
- the step speedup over the dense twin: the dense run's steps to its own final
  loss over the Switch run's steps to that loss, per paired seed, then mean,
  std and range;
- the same in training seconds on this machine (evaluations excluded);
- `benchmarks/quality.png`: loss against steps and against seconds, the mean
  of the seeds as a line and their range as a band.
Results and the command go to benchmarks/RESULTS.md by hand.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from training.curves import (  # noqa: E402
    Spread,
    paired_speedups,
    read_curve,
    step_speedup,
    time_speedup,
)

# Name -> training-job settings beyond the shared ones. All but the dense twin
# keep its FLOPs per token (top-1; top-2 doubles the expert FLOPs).
CONFIGURATIONS = {
    "dense": {"experts": 0},
    "switch-8": {"experts": 8},
    "switch-32": {"experts": 32},
    "switch-64": {"experts": 64},
    "switch-8-every-block": {"experts": 8, "sparse_every": 1},
    "switch-32-every-block": {"experts": 32, "sparse_every": 1},
    "switch-8-dropless": {"experts": 8, "capacity_factor": "none"},
    "switch-8-top2": {"experts": 8, "top_k": 2, "capacity_factor": 2.5},
}
DEFAULT_CONFIGS = ("dense", "switch-8", "switch-32", "switch-32-every-block")


def run_settings(name, seed, args):
    """The `TrainConfig` fields of one run, as a JSON-ready dict."""
    epochs = max(1, args.steps // args.steps_per_epoch)
    return {
        "preset": args.preset,
        "epochs": epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "validation_steps": args.validation_steps,
        "eval_every": args.eval_every,
        "schedule": "inverse_sqrt",
        "learning_rate": args.learning_rate,
        "warmup_steps": args.warmup_steps,
        "seed": seed,
        "sample_tokens": 0,
        "output": os.path.join(args.output, f"{name}-s{seed}"),
        **CONFIGURATIONS[name],
    }


def train_run(name, seed, args):
    """Trains one run in its own process unless it has finished already."""
    settings = run_settings(name, seed, args)
    output = settings["output"]
    if os.path.exists(os.path.join(output, "model.keras")):
        return
    os.makedirs(output, exist_ok=True)
    config_path = os.path.join(output, "run.json")
    with open(config_path, "w") as f:
        json.dump(settings, f, indent=1)
    start = time.monotonic()
    with open(os.path.join(output, "job.log"), "w") as log:
        subprocess.run(
            [sys.executable, "-m", "training.train", "--config", config_path],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    print(f"{name} seed {seed}: {time.monotonic() - start:.0f} s", flush=True)


def load_curves(names, args):
    """`{name: [Curve per seed]}` for the runs on disk."""
    return {
        name: [
            read_curve(
                os.path.join(args.output, f"{name}-s{seed}", "validation_curve.csv")
            )
            for seed in args.seeds
        ]
        for name in names
    }


def report(curves, baseline="dense"):
    """Rows of the results table, one per configuration."""
    rows = []
    for name, runs in curves.items():
        final = Spread.of(run.final_loss for run in runs)
        seconds = [run.seconds[-1] / run.steps[-1] for run in runs]
        row = {
            "config": name,
            "final_val_loss": final,
            "seconds_per_step": float(np.mean(seconds)),
        }
        if name != baseline and baseline in curves:
            row["step_speedups"], row["step_speedup"] = paired_speedups(
                curves[baseline], runs, step_speedup
            )
            row["time_speedups"], row["time_speedup"] = paired_speedups(
                curves[baseline], runs, time_speedup
            )
        rows.append(row)
    return rows


def _speedup_cell(row, key):
    if key not in row:
        return "-"  # the baseline itself
    return str(row[key]) if row[key] else "not reached by every seed"


def print_table(rows):
    print(
        f"\n{'config':<24} {'final val loss (nats)':<34} {'s/step':>7}  "
        f"{'step speedup vs dense':<34} time speedup"
    )
    for row in rows:
        print(
            f"{row['config']:<24} {str(row['final_val_loss']):<34} "
            f"{row['seconds_per_step']:7.3f}  "
            f"{_speedup_cell(row, 'step_speedup'):<34} "
            f"{_speedup_cell(row, 'time_speedup')}"
        )
        if "step_speedups" in row:
            per_seed = ", ".join(
                "never" if v is None else f"{v:.2f}" for v in row["step_speedups"]
            )
            print(f"{'':<24} per seed: {per_seed}")


def plot(curves, path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    by_steps, by_seconds = figure.subplots(1, 2, sharey=True)
    for name, runs in curves.items():
        steps = np.asarray(runs[0].steps)
        losses = np.array([run.losses for run in runs])
        seconds = np.mean([run.seconds for run in runs], axis=0)
        mean = losses.mean(axis=0)
        for axis, x in ((by_steps, steps), (by_seconds, seconds)):
            (line,) = axis.plot(x, mean, label=name)
            axis.fill_between(
                x,
                losses.min(axis=0),
                losses.max(axis=0),
                alpha=0.2,
                color=line.get_color(),
            )
    by_steps.set_xlabel("training step")
    by_seconds.set_xlabel("training seconds on this CPU")
    by_steps.set_ylabel("validation loss (nats per token)")
    for axis in (by_steps, by_seconds):
        axis.grid(alpha=0.3)
    lows = [min(run.losses) for runs in curves.values() for run in runs]
    by_steps.set_ylim(min(lows) - 0.1, min(lows) + 1.5)
    by_steps.legend()
    figure.suptitle(f"mean of {len(next(iter(curves.values())))} seeds; band: range")
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, choices=CONFIGURATIONS
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--validation-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument("--plot", default="benchmarks/quality.png")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    print("Command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    names = list(dict.fromkeys(["dense", *args.configs]))
    if not args.report_only:
        for seed in args.seeds:  # seed-major: every config has seed 0 first
            for name in names:
                train_run(name, seed, args)
    curves = load_curves(names, args)
    rows = report(curves)
    print_table(rows)
    plot(curves, args.plot)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"\nPlot: {args.plot}")


if __name__ == "__main__":
    main()
