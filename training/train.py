"""Train a Switch language model: `python -m training.train [flags]`.

    python -m training.train                     # tiny Switch LM on Shakespeare
    python -m training.train --experts 0         # its dense twin
    python -m training.train --data my.txt --preset tiny --epochs 5 --output runs/a
    python -m training.train --config run.json   # the same flags as a JSON object
    python -m training.train --strategy mirrored --cpu-devices 2  # data-parallel
    TF_CONFIG=... python -m training.train       # one worker of a cluster

Writes to --output (the chief alone when several workers train together):
`backup/` (BackupAndRestore: rerun the same command after a crash or `kill -9`
to resume), `tensorboard/`, `vocab.txt`, `model.keras`,
`serving/switch/<version>/` (a SavedModel for TF Serving), `history.csv`,
`expert_load.json`, `loss.png`, `expert_load.png` and `sample.txt`.
"""

import argparse
import csv
import json
import logging
import os
import sys

import keras
import tensorflow as tf

from tf_switch import text
from tf_switch.distribute import (
    STRATEGIES,
    StrategyUnavailableError,
    is_chief,
    resolve_strategy,
    split_cpu,
)
from tf_switch.export import export_for_serving
from tf_switch.metrics import Perplexity
from tf_switch.models import SwitchLanguageModel, get_preset, model_report
from tf_switch.schedules import WarmupSchedule

from . import corpus as corpus_lib
from . import plots
from .callbacks import (
    EpochSetter,
    ExpertLoadRecorder,
    ResumableBackupAndRestore,
)
from .data import EpochOrderedWindows
from .generate import decoder_for, sample_text

logger = logging.getLogger("training")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a Switch language model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file of flag values (flags override)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--experts", type=int, help="experts per Switch FFN; 0: dense")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--eval-capacity-factor", type=float, default=2.0)
    parser.add_argument("--group-size", type=int, help="tokens per routing group")
    parser.add_argument(
        "--expert-parallel",
        action="store_true",
        help="shard each Switch layer's experts over the replicas (N/D each, "
        "all-to-all token exchange); --experts and --batch-size must be "
        "divisible by the number of replicas",
    )
    parser.add_argument(
        "--dispatch",
        choices=("gather", "einsum"),
        help="token dispatch (default: the preset's); einsum suits TPUs",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, help="cap on batches per epoch")
    parser.add_argument("--validation-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--schedule", choices=("inverse_sqrt", "cosine"), default="cosine"
    )
    parser.add_argument(
        "--precision", choices=("float32", "mixed_bfloat16"), default="float32"
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        help="split the CPU into this many logical devices (for --strategy "
        "mirrored without GPUs)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=1,
        help="training steps per tf.function call (TPUs: e.g. 50)",
    )
    parser.add_argument(
        "--jit-compile", action="store_true", help="compile the step with XLA"
    )
    parser.add_argument(
        "--data", help="UTF-8 text file or folder (default: Shakespeare)"
    )
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sample-tokens",
        type=int,
        default=56,
        help="new tokens of the sample (prompt plus sample fit the positions)",
    )
    parser.add_argument(
        "--sample-top-k", type=int, default=40, help="top-k of the sample; 0: off"
    )
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--output", default="runs/tiny")
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            values = json.load(f)
        unknown = set(values) - set(vars(args))
        if unknown:
            parser.error(f"unknown keys in {args.config}: {sorted(unknown)}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def model_config(args, vocab_size):
    """The preset with the flags' overrides applied."""
    config = get_preset(args.preset, vocab_size=vocab_size)
    overrides = {}
    if args.sequence_length:
        overrides["sequence_length"] = args.sequence_length
    if args.experts is not None:
        overrides["num_experts"] = args.experts or None
    config = config.replace(**overrides)
    if config.num_experts is None:
        return config.dense_twin()
    switch_options = {
        **config.switch_options,
        "capacity_factor": args.capacity_factor,
        "eval_capacity_factor": args.eval_capacity_factor,
    }
    if args.group_size:
        switch_options["group_size"] = args.group_size
    if args.dispatch:
        switch_options["dispatch"] = args.dispatch
    if args.expert_parallel:
        switch_options["expert_parallel"] = True
    return config.replace(switch_options=switch_options)


def load_tokenizer(corpus, args, chief=True):
    """The run's WordPiece tokenizer, built once and kept in the output dir.

    Every worker of a cluster builds the same vocabulary (it is deterministic);
    only the chief writes it.
    """
    path = os.path.join(args.output, "vocab.txt")
    if os.path.exists(path):
        return text.WordPieceTokenizer(path)
    logger.info("Building a %d-token WordPiece vocabulary ...", args.vocab_size)
    tokenizer = text.WordPieceTokenizer(
        text.build_vocabulary([corpus.train], vocab_size=args.vocab_size)
    )
    if chief:
        temporary = path + ".tmp"
        tokenizer.save_vocabulary(temporary)
        os.replace(temporary, path)
    return tokenizer


def build_datasets(corpus, tokenizer, config, args):
    train_ids = text.encode_corpus(tokenizer, corpus.train)
    validation_ids = text.encode_corpus(tokenizer, corpus.validation)
    logger.info(
        "Corpus %s: %d training and %d validation tokens",
        corpus.source,
        len(train_ids),
        len(validation_ids),
    )
    train = EpochOrderedWindows(
        train_ids,
        config.sequence_length,
        args.batch_size,
        seed=args.seed,
        max_steps=args.steps_per_epoch,
    )
    validation = EpochOrderedWindows(
        validation_ids,
        config.sequence_length,
        args.batch_size,
        shuffle=False,
        max_steps=args.validation_steps,
    )
    return train, validation


def compile_model(config, steps_per_epoch, args):
    model = SwitchLanguageModel(config)
    schedule = WarmupSchedule(
        args.learning_rate,
        warmup_steps=args.warmup_steps,
        total_steps=steps_per_epoch * args.epochs,
        decay=args.schedule,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[Perplexity()],
        steps_per_execution=args.steps_per_execution,
        jit_compile=args.jit_compile,
    )
    return model


def read_history(path):
    """`{metric: [value per epoch]}` from the run's CSV log (all epochs,
    also those before a resume)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"}


def write_results(model, load_recorder, tokenizer, args):
    """Checkpoint, SavedModel, plots and a text sample, all under --output."""
    model.save(os.path.join(args.output, "model.keras"))
    # The next version under serving/switch/ (TF Serving's --model_base_path;
    # a rerun of a finished job adds a version).
    export_dir = export_for_serving(
        model, tokenizer, os.path.join(args.output, "serving"), model_name="switch"
    )
    history = read_history(os.path.join(args.output, "history.csv"))
    plots.plot_losses(history, os.path.join(args.output, "loss.png"))
    plots.plot_expert_load(
        load_recorder.history, os.path.join(args.output, "expert_load.png")
    )
    # The decoding of the SavedModel's `generate`, on a plain single-device
    # copy: calling the trained model here would update its routing metrics,
    # which a multi-worker strategy synchronizes with workers that have
    # stopped. Prompt and sample must fit the model's positions.
    decoder = decoder_for(model)
    prompt_tokens = 1 + len(tokenizer.tokenize(tf.constant([args.prompt]))[0])
    room = decoder.context_length - prompt_tokens
    if args.sample_tokens > room:
        logger.info(
            "Sampling %d tokens, not %d: the prompt and the sample must fit the "
            "model's %d positions.",
            max(room, 0),
            args.sample_tokens,
            decoder.context_length,
        )
    sample = sample_text(
        decoder,
        tokenizer,
        args.prompt,
        max(min(args.sample_tokens, room), 0),
        temperature=0.8,
        top_k=args.sample_top_k,
        seed=args.seed,
    )
    with open(os.path.join(args.output, "sample.txt"), "w") as f:
        f.write(sample + "\n")
    return sample, export_dir


def check_expert_parallel(args, strategy):
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        raise SystemExit(
            f"--expert-parallel: --batch-size {args.batch_size} must be "
            f"divisible by the {replicas} replicas (equal per-replica batches)."
        )
    if args.jit_compile and not isinstance(strategy, tf.distribute.TPUStrategy):
        raise SystemExit(
            "--expert-parallel with --jit-compile runs only under TPUStrategy."
        )


def chief_callbacks(args, load_recorder):
    """Callbacks that write logs: the chief's alone."""
    return [
        keras.callbacks.TensorBoard(os.path.join(args.output, "tensorboard")),
        keras.callbacks.CSVLogger(
            os.path.join(args.output, "history.csv"), append=True
        ),
        load_recorder,
    ]


def train(args, strategy=None):
    """Runs the job for parsed flags; returns the trained model.

    `strategy`: one already made (e.g. by a notebook that looked for a TPU
    itself); None resolves `--strategy`.
    """
    if args.cpu_devices:
        split_cpu(args.cpu_devices)
    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    strategy = strategy or resolve_strategy(args.strategy)
    if args.expert_parallel:
        check_expert_parallel(args, strategy)
    chief = is_chief(strategy)

    corpus = corpus_lib.load_corpus(args.data)
    tokenizer = load_tokenizer(corpus, args, chief)
    config = model_config(args, tokenizer.vocab_size)
    train_windows, validation_windows = build_datasets(corpus, tokenizer, config, args)
    print(model_report(config))

    with strategy.scope():
        model = compile_model(config, train_windows.steps_per_epoch, args)
    load_recorder = ExpertLoadRecorder(os.path.join(args.output, "expert_load.json"))
    callbacks = [
        EpochSetter(train_windows),
        # Every worker restores from the backup; the chief alone writes it.
        ResumableBackupAndRestore(os.path.join(args.output, "backup"), write=chief),
        # raise_error: a NaN epoch must not reach the backup at its end.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        *(chief_callbacks(args, load_recorder) if chief else []),
    ]
    model.fit(
        train_windows.dataset(),
        validation_data=validation_windows.dataset(),
        epochs=args.epochs,
        callbacks=callbacks,
        shuffle=False,  # the windows are already in their (seed, epoch) order
        verbose=2 if not sys.stdout.isatty() else "auto",
    )
    if not chief:
        return model
    sample, export_dir = write_results(model, load_recorder, tokenizer, args)
    print(f"\nSavedModel: {export_dir}\nSample:\n{sample}")
    return model


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        train(args)
    except StrategyUnavailableError as error:
        raise SystemExit(f"--strategy {args.strategy}: {error}") from error


if __name__ == "__main__":
    main()
