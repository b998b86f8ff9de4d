"""Switch vs its dense twin at equal FLOPs: validation perplexity after the
same number of steps, trained side by side by the project's own job.

    .venv/bin/python benchmarks/quality.py                      # tiny, 4 x 150 steps
    .venv/bin/python benchmarks/quality.py --epochs 8 --experts 8 32

Each model is trained with `python -m training.train` in its own process on
the same data, seed and schedule, into `--output/<name>`; the table compares
the last epoch's validation perplexity and the mean step time (from the job's
history and wall clock). Results are recorded in benchmarks/RESULTS.md.
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import time


def run_job(name, experts, args):
    output = os.path.join(args.output, name)
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--output",
        output,
        "--preset",
        args.preset,
        "--experts",
        str(experts),
        "--epochs",
        str(args.epochs),
        "--steps-per-epoch",
        str(args.steps_per_epoch),
        "--seed",
        str(args.seed),
        "--sample-tokens",
        "0",
    ]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    with open(os.path.join(output, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    return {
        "name": name,
        "val_perplexity": [float(row["val_perplexity"]) for row in rows],
        "seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--experts", type=int, nargs="+", default=[8])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/quality")
    args = parser.parse_args()
    print("Command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    results = [run_job("dense", 0, args)]
    results += [run_job(f"switch-{n}", n, args) for n in args.experts]
    dense = results[0]
    print(
        f"\n{'model':<12} {'val ppl per epoch':<40} {'final':>8} {'x dense':>8}"
        f" {'wall s':>8} {'x dense':>8}"
    )
    for result in results:
        curve = " ".join(f"{p:.1f}" for p in result["val_perplexity"])
        final = result["val_perplexity"][-1]
        print(
            f"{result['name']:<12} {curve:<40} {final:8.1f} "
            f"{final / dense['val_perplexity'][-1]:8.3f} {result['seconds']:8.0f} "
            f"{result['seconds'] / dense['seconds']:8.2f}"
        )
    dense_final = dense["val_perplexity"][-1]
    gains = ", ".join(
        f"{r['name']}: {math.log(dense_final / r['val_perplexity'][-1]):.3f}"
        for r in results[1:]
    )
    print(f"\nvalidation log-perplexity gain over dense (nats): {gains}")


if __name__ == "__main__":
    main()
