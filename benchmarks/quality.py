"""Switch vs its dense twin at equal FLOPs: validation perplexity after the
same number of steps, trained side by side by the project's own job.

    .venv/bin/python benchmarks/quality.py                      # tiny, 4 x 150 steps
    .venv/bin/python benchmarks/quality.py --epochs 8 --experts 8 32
    .venv/bin/python benchmarks/quality.py --dropless --epochs 2 \
        --steps-per-epoch 100                                   # issue 11

With `--dropless`, each expert count trains twice, with capacity factor 1.25
and dropless (`--capacity-factor none`), and every Switch model is evaluated
afterwards on the same validation windows with dropless evaluation and with
evaluation capacity factors 2.0 (the default) and 1.25.

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

EVAL_CAPACITY_FACTORS = (None, 2.0, 1.25)


def run_job(name, experts, args, extra_flags=()):
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
        *extra_flags,
    ]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    with open(os.path.join(output, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    return {
        "name": name,
        "output": output,
        "val_perplexity": [float(row["val_perplexity"]) for row in rows],
        "seconds": seconds,
    }


def evaluate_with_capacities(result, args):
    """Validation perplexity of a trained run under each evaluation capacity
    factor: the saved model's weights in a copy with that factor."""
    import keras

    from tf_switch.metrics import Perplexity
    from tf_switch.models import SwitchLanguageModel
    from training import corpus as corpus_lib
    from training.config import TrainConfig
    from training.train import build_datasets, load_tokenizer

    trained = keras.saving.load_model(os.path.join(result["output"], "model.keras"))
    config = TrainConfig(
        preset=args.preset,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        output=result["output"],
    )
    corpus = corpus_lib.load_corpus(None)
    tokenizer = load_tokenizer(corpus, config)
    _, validation = build_datasets(corpus, tokenizer, trained.config, config)
    perplexities = {}
    for factor in EVAL_CAPACITY_FACTORS:
        options = trained.config.switch_options.replace(eval_capacity_factor=factor)
        model = SwitchLanguageModel(trained.config.replace(switch_options=options))
        model.set_weights(trained.get_weights())
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[Perplexity()],
        )
        logs = model.evaluate(validation.dataset(), verbose=0, return_dict=True)
        perplexities[factor] = logs["perplexity"]
    return perplexities


def dropless_study(args):
    """Dense twin, capacity 1.25 and dropless, each evaluated both ways."""
    results = [run_job("dense", 0, args)]
    for experts in args.experts:
        results.append(
            run_job(
                f"switch-{experts}-cf1.25", experts, args, ["--capacity-factor", "1.25"]
            )
        )
        results.append(
            run_job(
                f"switch-{experts}-dropless",
                experts,
                args,
                ["--capacity-factor", "none", "--eval-capacity-factor", "none"],
            )
        )
    dense = results[0]["val_perplexity"][-1]
    factors = " ".join(
        f"{'eval ' + str(f or 'dropless'):>14}" for f in EVAL_CAPACITY_FACTORS
    )
    print(f"\n{'model':<22} {'val ppl per epoch (job)':<26} {factors} {'wall s':>7}")
    for result in results:
        curve = " ".join(f"{p:.1f}" for p in result["val_perplexity"])
        evaluated = (
            evaluate_with_capacities(result, args) if result["name"] != "dense" else {}
        )
        cells = " ".join(
            f"{evaluated[f]:>14.1f}" if f in evaluated else f"{'-':>14}"
            for f in EVAL_CAPACITY_FACTORS
        )
        print(f"{result['name']:<22} {curve:<26} {cells} {result['seconds']:>7.0f}")
    print(f"\ndense twin final validation perplexity: {dense:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--experts", type=int, nargs="+", default=[8])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument(
        "--dropless",
        action="store_true",
        help="train capacity 1.25 and dropless per expert count, evaluate both ways",
    )
    args = parser.parse_args()
    print("Command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    if args.dropless:
        dropless_study(args)
        return
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
