"""Prune a trained Switch model's experts: `python -m training.prune RUN/model.keras`.

    python -m training.prune runs/switch/model.keras --keep 4 2 1 --output runs/pruned

Measures each expert's load (tokens whose top expert it is) and router mass
(mean router probability) on `--calibration-steps` batches of the training
text, keeps the `k` most used experts of every Switch layer for each `k` of
`--keep` (`tf_switch.lifecycle.prune_experts`), and writes, per `k`,
`<output>/keep_<k>/` with `model.keras`, `vocab.txt` and
`serving/switch/1/` (a SavedModel), like a training run's output. Then it
prints a table, also saved as `<output>/pruning.md` and `pruning.json`:
experts kept per layer, validation perplexity (the training job's
validation batches, evaluation routing), parameters, and the median latency
of a batch-1, full-length `serving_default` request to the SavedModel, in
this process. `expert_usage.json` holds the measured load and mass.
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import time

import keras
import tensorflow as tf

from tf_switch import text
from tf_switch.export import export_for_serving
from tf_switch.lifecycle import expert_usage, prune_experts
from tf_switch.lifecycle.pruning import CRITERIA
from tf_switch.metrics import Perplexity

from . import corpus as corpus_lib
from .config import TrainConfig
from .train import build_datasets

logger = logging.getLogger("training")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m training.prune",
        description="Keep the most used experts of a trained Switch model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="a run's model.keras (vocab.txt beside it)")
    parser.add_argument(
        "--keep", type=int, nargs="+", default=[4], help="experts kept per layer"
    )
    parser.add_argument("--output", default="runs/pruned", help="output directory")
    parser.add_argument(
        "--data", default=None, help="the run's --data (default: Shakespeare)"
    )
    parser.add_argument(
        "--criterion", choices=CRITERIA, default="load", help="what 'most used' means"
    )
    parser.add_argument("--calibration-steps", type=int, default=20)
    parser.add_argument("--validation-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="calibration batch order")
    return parser


def serving_latency_ms(export_dir, sequence_length, runs):
    """Median milliseconds of a batch-1 `serving_default` call, after warm-up."""
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    token_ids = tf.fill([1, sequence_length], tf.constant(text.BOS_ID, tf.int32))
    for _ in range(3):
        serve(token_ids=token_ids)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        serve(token_ids=token_ids)["logits"].numpy()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def evaluate_perplexity(model, validation):
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[Perplexity()],
    )
    return float(
        model.evaluate(validation.dataset(), verbose=0, return_dict=True)["perplexity"]
    )


def write_run(model, tokenizer, vocabulary, folder):
    """`model.keras`, `vocab.txt` and `serving/switch/1/` in `folder`."""
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    shutil.copyfile(vocabulary, os.path.join(folder, "vocab.txt"))
    return export_for_serving(model, tokenizer, os.path.join(folder, "serving"))


def format_table(rows):
    lines = [
        "| experts per layer | val perplexity | parameters | serving latency (ms) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['experts']}{' (original)' if row['original'] else ''} | "
            f"{row['val_perplexity']:.1f} | {row['parameters']:,} | "
            f"{row['latency_ms']:.1f} |"
        )
    return "\n".join(lines)


def prune(args):
    """Runs the pruning and measurements; returns the table's rows."""
    model = keras.saving.load_model(args.model)
    num_experts = model.config.num_experts
    if num_experts is None:
        raise SystemExit(
            f"{args.model} is a dense model: there are no experts to prune."
        )
    wrong = [k for k in args.keep if not 1 <= k <= num_experts]
    if wrong:
        raise SystemExit(f"--keep {wrong}: expected values in [1, {num_experts}].")
    vocabulary = os.path.join(os.path.dirname(os.path.abspath(args.model)), "vocab.txt")
    if not os.path.isfile(vocabulary):
        raise SystemExit(f"{args.model} has no vocab.txt beside it.")
    tokenizer = text.WordPieceTokenizer(vocabulary)
    settings = TrainConfig(
        batch_size=args.batch_size,
        steps_per_epoch=args.calibration_steps,
        validation_steps=args.validation_steps,
        seed=args.seed,
    )
    calibration, validation = build_datasets(
        corpus_lib.load_corpus(args.data), tokenizer, model.config, settings
    )
    os.makedirs(args.output, exist_ok=True)
    usage = expert_usage(model, calibration.dataset())
    with open(os.path.join(args.output, "expert_usage.json"), "w") as f:
        json.dump(usage, f, indent=1)

    rows = []
    for keep in [num_experts, *sorted(set(args.keep) - {num_experts}, reverse=True)]:
        kept = None
        candidate = model
        if keep != num_experts:
            candidate, kept = prune_experts(model, keep, usage, args.criterion)
        export_dir = write_run(
            candidate, tokenizer, vocabulary, os.path.join(args.output, f"keep_{keep}")
        )
        rows.append(
            {
                "experts": keep,
                "original": keep == num_experts,
                "kept": kept,
                "val_perplexity": evaluate_perplexity(candidate, validation),
                "parameters": int(candidate.count_params()),
                "latency_ms": serving_latency_ms(
                    export_dir, model.config.sequence_length, args.latency_runs
                ),
                "export_dir": export_dir,
            }
        )
        logger.info("kept %d experts per layer: %s", keep, kept or "all")
    table = format_table(rows)
    with open(os.path.join(args.output, "pruning.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "pruning.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(table)
    return rows


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prune(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
