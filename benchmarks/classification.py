"""Switch classifiers against their dense twins, and V-MoE's capacity ablation.

    .venv/bin/python benchmarks/classification.py                  # both tasks
    .venv/bin/python benchmarks/classification.py --tasks digits --seeds 0 1 2
    .venv/bin/python benchmarks/classification.py --report-only     # re-analyse

Each (task, model, seed) is trained by the project's job (`python -m
training.classify`) in its own process into `--output/<task>-<model>-s<seed>`
(a finished run is not trained again). Printed: test accuracy of the Switch
model and its dense twin (mean and range over seeds), parameters and FLOPs per
token of the transformer stack, training seconds.

The ablation (Riquelme et al. 2021, V-MoE §4, batch-prioritized routing):
the trained Switch ViT is evaluated with each `--capacity-factors` value as
its inference capacity (`inference_model(eval_capacity_factor=...)`, every
image its own routing group), once with batch-prioritized routing (the
patches the router is surest of take the expert slots first) and once in
sequence order (the first patches of the image do), printing test accuracy
and the share of patches that reached an expert; `benchmarks/vmoe_capacity.png`
plots accuracy against capacity factor.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from training.curves import Spread  # noqa: E402

MODELS = {"switch": [], "dense": ["--experts", "0"]}
CAPACITY_FACTORS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)


def run_dir(args, task, model, seed):
    return os.path.join(args.output, f"{task}-{model}-s{seed}")


def train_run(args, task, model, seed):
    output = run_dir(args, task, model, seed)
    if os.path.exists(os.path.join(output, "results.json")):
        return
    os.makedirs(output, exist_ok=True)
    command = [sys.executable, "-m", "training.classify", "--task", task]
    command += ["--seed", str(seed), "--output", output, *MODELS[model]]
    command += ["--epochs", str(args.epochs[task])]
    if args.steps_per_epoch[task]:
        command += ["--steps-per-epoch", str(args.steps_per_epoch[task])]
    start = time.monotonic()
    with open(os.path.join(output, "job.log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    print(f"{task} {model} seed {seed}: {seconds:.0f} s", flush=True)


def accuracy_table(args):
    rows = []
    for task in args.tasks:
        for model in MODELS:
            results = []
            for seed in args.seeds:
                with open(
                    os.path.join(run_dir(args, task, model, seed), "results.json")
                ) as f:
                    results.append(json.load(f))
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "test_accuracy": Spread.of(r["test_accuracy"] for r in results),
                    "majority_class": results[0]["majority_class_accuracy"],
                    "test_examples": results[0]["test_examples"],
                    "parameters": results[0]["parameters"],
                    "stack_flops_per_token": results[0]["stack_flops_per_token"],
                }
            )
    print(
        f"\n{'task':<7} {'model':<7} {'test accuracy (mean ± std [range])':<36} "
        f"{'majority':>8} {'examples':>8} {'params':>9} {'stack FLOPs/token':>17}"
    )
    for row in rows:
        print(
            f"{row['task']:<7} {row['model']:<7} {str(row['test_accuracy']):<36} "
            f"{row['majority_class']:8.4f} {row['test_examples']:8d} "
            f"{row['parameters']:9d} {row['stack_flops_per_token']:17d}"
        )
    return rows


def capacity_ablation(args, seed):
    """Test accuracy and routed share of patches per capacity factor, with
    batch-prioritized and with sequence-order routing."""
    import keras
    import tensorflow as tf

    import tf_switch  # noqa: F401  (registers the model classes)
    from tf_switch.models.decoding import inference_model
    from tf_switch.models.routes import route_tokens
    from training.digits import load_digits

    model = keras.saving.load_model(
        os.path.join(run_dir(args, "digits", "switch", seed), "model.keras")
    )
    images, labels = load_digits().test
    rows = []
    for factor in (*args.capacity_factors, None):
        for prioritized in (True, False):
            copy = inference_model(
                model,
                eval_capacity_factor=factor,
                batch_prioritized_routing=prioritized,
            )
            correct, routed = 0, []
            for start in range(0, len(labels), 250):
                batch = tf.constant(images[start : start + 250])
                logits = copy(batch, training=False)
                correct += int(
                    np.sum(np.argmax(logits, -1) == labels[start : start + 250])
                )
                expert, _ = route_tokens(copy, batch)
                routed.append(np.asarray(expert) >= 0)
            rows.append(
                {
                    "capacity_factor": factor,
                    "batch_prioritized": prioritized,
                    "test_accuracy": correct / len(labels),
                    "routed_patches": float(np.concatenate(routed).mean()),
                }
            )
            if factor is None:
                break  # dropless: the order does not matter
    print("\ncapacity factor   routing             test accuracy   patches routed")
    for row in rows:
        factor = (
            "dropless" if row["capacity_factor"] is None else row["capacity_factor"]
        )
        order = "batch-prioritized" if row["batch_prioritized"] else "sequence order"
        print(
            f"{factor!s:<17} {order:<19} {row['test_accuracy']:13.4f}   "
            f"{row['routed_patches']:14.3f}"
        )
    return rows


def plot_ablation(rows, path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axis = figure.subplots()
    dropless = next(r for r in rows if r["capacity_factor"] is None)
    for prioritized, name in ((True, "batch-prioritized"), (False, "sequence order")):
        points = [
            (r["capacity_factor"], r["test_accuracy"])
            for r in rows
            if r["capacity_factor"] is not None
            and r["batch_prioritized"] == prioritized
        ]
        axis.plot(*zip(*points, strict=True), marker="o", label=name)
    axis.axhline(dropless["test_accuracy"], color="grey", ls="--", label="dropless")
    axis.set_xlabel("inference capacity factor")
    axis.set_ylabel("test accuracy")
    axis.set_title("Switch ViT on MNIST: skipping patches at inference")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "genre"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--digits-epochs", type=int, default=5)
    parser.add_argument("--genre-epochs", type=int, default=4)
    parser.add_argument("--genre-steps-per-epoch", type=int, default=150)
    parser.add_argument(
        "--capacity-factors", type=float, nargs="+", default=CAPACITY_FACTORS
    )
    parser.add_argument("--output", default="runs/classification")
    parser.add_argument("--plot", default="benchmarks/vmoe_capacity.png")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.epochs = {"digits": args.digits_epochs, "genre": args.genre_epochs}
    args.steps_per_epoch = {"digits": None, "genre": args.genre_steps_per_epoch}
    print("Command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                for model in MODELS:
                    train_run(args, task, model, seed)
    summary = {"accuracy": accuracy_table(args)}
    if "digits" in args.tasks:
        summary["capacity"] = capacity_ablation(args, args.seeds[0])
        plot_ablation(summary["capacity"], args.plot)
        print(f"\nPlot: {args.plot}")
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)


if __name__ == "__main__":
    main()
