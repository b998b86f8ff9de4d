"""Train a Switch language model: `python -m training.train [flags]`.

    python -m training.train                     # tiny Switch LM on Shakespeare
    python -m training.train --experts 0         # its dense twin
    python -m training.train --data my.txt --preset tiny --epochs 5 --output runs/a
    python -m training.train --config run.json   # the same flags as a JSON object
    python -m training.train --strategy mirrored --cpu-devices 2  # data-parallel
    python -m training.train --init-from runs/dense/model.keras --experts 8  # upcycle
    python -m training.train --distill-from runs/switch/model.keras --experts 0
    TF_CONFIG=... python -m training.train       # one worker of a cluster

Writes to --output (the chief alone when several workers train together):
`backup/` (BackupAndRestore: rerun the same command after a crash or `kill -9`
to resume), `tensorboard/`, `vocab.txt`, `model.keras`,
`serving/switch/<version>/` (a SavedModel for TF Serving), `history.csv`,
`expert_load.json`, `loss.png`, `expert_load.png` and `sample.txt` (and
`validation_curve.csv` with --eval-every).
"""

import csv
import logging
import os
import sys

import keras
import tensorflow as tf

from tf_switch import text
from tf_switch.distribute import (
    StrategyUnavailableError,
    is_chief,
    resolve_strategy,
    split_cpu,
)
from tf_switch.export import export_for_serving
from tf_switch.metrics import Perplexity
from tf_switch.models import get_preset, model_report
from tf_switch.schedules import WarmupSchedule

from . import corpus as corpus_lib
from . import lifecycle, plots
from .callbacks import (
    EpochSetter,
    ExpertLoadRecorder,
    ResumableBackupAndRestore,
)
from .config import TrainConfig, parse_args
from .data import EpochOrderedWindows
from .generate import decoder_for, sample_text
from .precision import warn_if_slow_bfloat16
from .progress import ConciseProgbar
from .validation_curve import ValidationCurve

logger = logging.getLogger("training")

__all__ = ["TrainConfig", "build_model_config", "main", "parse_args", "train"]


def build_model_config(config, vocab_size):
    """The preset with the run's overrides applied; routing settings that the
    run leaves at None keep the preset's values."""
    model_config = get_preset(config.preset, vocab_size=vocab_size)
    if config.sequence_length:
        model_config = model_config.replace(sequence_length=config.sequence_length)
    if config.experts is not None:
        model_config = model_config.replace(num_experts=config.experts or None)
    if config.sparse_every is not None:
        model_config = model_config.replace(sparse_every=config.sparse_every)
    if model_config.num_experts is None:
        return model_config.dense_twin()
    overrides = config.switch_overrides()
    if config.init_from:
        overrides = {**lifecycle.upcycling_overrides(config), **overrides}
    return model_config.replace(
        switch_options=model_config.switch_options.replace(**overrides)
    )


def load_tokenizer(corpus, config, chief=True):
    """The run's WordPiece tokenizer, built once and kept in the output dir.

    Every worker of a cluster builds the same vocabulary (it is deterministic);
    only the chief writes it.
    """
    path = os.path.join(config.output, "vocab.txt")
    if os.path.exists(path):
        return text.WordPieceTokenizer(path)
    logger.info(
        "Building a WordPiece vocabulary of at most %d tokens ...", config.vocab_size
    )
    tokenizer = text.WordPieceTokenizer(
        text.build_vocabulary([corpus.train], vocab_size=config.vocab_size)
    )
    # The learner stops below the target (1,957 of 2,000 on Shakespeare).
    logger.info("Vocabulary: %d tokens.", tokenizer.vocab_size)
    if chief:
        temporary = path + ".tmp"
        tokenizer.save_vocabulary(temporary)
        os.replace(temporary, path)
    return tokenizer


def build_datasets(corpus, tokenizer, model_config, config):
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
        model_config.sequence_length,
        config.batch_size,
        seed=config.seed,
        max_steps=config.steps_per_epoch,
    )
    validation = EpochOrderedWindows(
        validation_ids,
        model_config.sequence_length,
        config.batch_size,
        shuffle=False,
        max_steps=config.validation_steps,
    )
    return train, validation


def compile_model(model_config, steps_per_epoch, config):
    """The model to fit (new, `--init-from`, or wrapped with a
    `--distill-from` teacher), compiled. Call under the strategy's scope."""
    model = lifecycle.with_teacher(
        lifecycle.initial_model(model_config, config), config
    )
    schedule = WarmupSchedule(
        config.learning_rate,
        warmup_steps=config.warmup_steps,
        total_steps=steps_per_epoch * config.epochs,
        decay=config.schedule,
    )
    distilling = model is not lifecycle.trained_model(model)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        # A distillation computes its own loss from the teacher's logits.
        loss=None
        if distilling
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[Perplexity()],
        steps_per_execution=config.steps_per_execution,
        jit_compile=config.jit_compile,
    )
    return model


def read_history(path):
    """`{metric: [value per epoch]}` from the run's CSV log (all epochs,
    also those before a resume)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"}


def write_results(model, load_recorder, tokenizer, config):
    """Checkpoint, SavedModel, plots and a text sample, all under --output."""
    model.save(os.path.join(config.output, "model.keras"))
    # The next version under serving/switch/ (TF Serving's --model_base_path;
    # a rerun of a finished job adds a version).
    export_dir = export_for_serving(
        model, tokenizer, os.path.join(config.output, "serving"), model_name="switch"
    )
    history = read_history(os.path.join(config.output, "history.csv"))
    plots.plot_losses(history, os.path.join(config.output, "loss.png"))
    plots.plot_expert_load(
        load_recorder.history, os.path.join(config.output, "expert_load.png")
    )
    # The decoding of the SavedModel's `generate`, on a plain single-device
    # copy: calling the trained model here would update its routing metrics,
    # which a multi-worker strategy synchronizes with workers that have
    # stopped. Prompt and sample must fit the model's positions.
    decoder = decoder_for(model)
    prompt_tokens = 1 + len(tokenizer.tokenize(tf.constant([config.prompt]))[0])
    room = decoder.context_length - prompt_tokens
    if config.sample_tokens > room:
        logger.info(
            "Sampling %d tokens, not %d: the prompt and the sample must fit the "
            "model's %d positions.",
            max(room, 0),
            config.sample_tokens,
            decoder.context_length,
        )
    sample = sample_text(
        decoder,
        tokenizer,
        config.prompt,
        max(min(config.sample_tokens, room), 0),
        temperature=0.8,
        top_k=config.sample_top_k,
        seed=config.seed,
    )
    with open(os.path.join(config.output, "sample.txt"), "w") as f:
        f.write(sample + "\n")
    return sample, export_dir


def check_jit_compile(config, model_config):
    """--jit-compile needs static shapes: refuse dropless and sorted routing
    here, with what to pass, rather than deep inside the first step."""
    options = model_config.switch_options
    dynamic = options.dispatch == "sorted" or None in (
        options.capacity_factor,
        options.eval_capacity_factor,
    )
    if config.jit_compile and model_config.num_experts and dynamic:
        raise SystemExit(
            "--jit-compile (XLA) needs static expert capacity, but this run "
            "routes dropless or dispatches sorted (capacity_factor="
            f"{options.capacity_factor}, eval_capacity_factor="
            f"{options.eval_capacity_factor}, dispatch={options.dispatch!r}). "
            "Pass --capacity-factor 1.25 --eval-capacity-factor 2.0 "
            "--dispatch einsum (TPU) or gather, or drop --jit-compile."
        )


def check_expert_parallel(config, strategy):
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise SystemExit(
            f"--expert-parallel: --batch-size {config.batch_size} must be "
            f"divisible by the {replicas} replicas (equal per-replica batches)."
        )
    if config.jit_compile and not isinstance(strategy, tf.distribute.TPUStrategy):
        raise SystemExit(
            "--expert-parallel with --jit-compile runs only under TPUStrategy."
        )


def chief_callbacks(config, load_recorder):
    """Callbacks that write logs: the chief's alone."""
    return [
        keras.callbacks.TensorBoard(os.path.join(config.output, "tensorboard")),
        keras.callbacks.CSVLogger(
            os.path.join(config.output, "history.csv"), append=True
        ),
        load_recorder,
    ]


def train(config, strategy=None):
    """Runs a training job; returns the trained model.

    Args:
        config: a `training.config.TrainConfig`.
        strategy: one already made (e.g. by a notebook that looked for a TPU
            itself); None resolves `config.strategy`.

    Example (a notebook or a test):

        model = train(TrainConfig(experts=0, epochs=1, output="runs/dense"))
    """
    if config.cpu_devices:
        split_cpu(config.cpu_devices)
    os.makedirs(config.output, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    warn_if_slow_bfloat16(config.precision)
    strategy = strategy or resolve_strategy(config.strategy)
    if config.expert_parallel:
        check_expert_parallel(config, strategy)
    chief = is_chief(strategy)

    corpus = corpus_lib.load_corpus(config.data)
    if chief:
        lifecycle.reuse_vocabulary(config)
    tokenizer = load_tokenizer(corpus, config, chief)
    model_config = build_model_config(config, tokenizer.vocab_size)
    check_jit_compile(config, model_config)
    train_windows, validation_windows = build_datasets(
        corpus, tokenizer, model_config, config
    )
    print(model_report(model_config))

    with strategy.scope():
        model = compile_model(model_config, train_windows.steps_per_epoch, config)
    load_recorder = ExpertLoadRecorder(os.path.join(config.output, "expert_load.json"))
    callbacks = [
        EpochSetter(train_windows),
        # Every worker restores from the backup; the chief alone writes it.
        ResumableBackupAndRestore(os.path.join(config.output, "backup"), write=chief),
        # raise_error: a NaN epoch must not reach the backup at its end.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        ConciseProgbar(),
        *(chief_callbacks(config, load_recorder) if chief else []),
    ]
    if config.eval_every and chief:
        callbacks.append(
            ValidationCurve(
                validation_windows.dataset(),
                config.eval_every,
                os.path.join(config.output, "validation_curve.csv"),
            )
        )
    model.fit(
        train_windows.dataset(),
        validation_data=validation_windows.dataset(),
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the windows are already in their (seed, epoch) order
        verbose=2 if not sys.stdout.isatty() else "auto",
    )
    model = lifecycle.trained_model(model)
    if not chief:
        return model
    sample, export_dir = write_results(model, load_recorder, tokenizer, config)
    print(f"\nSavedModel: {export_dir}\nSample:\n{sample}")
    return model


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = parse_args(argv)
    try:
        train(config)
    except StrategyUnavailableError as error:
        raise SystemExit(f"--strategy {config.strategy}: {error}") from error


if __name__ == "__main__":
    main()
