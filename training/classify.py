"""Train a Switch classifier: `python -m training.classify [flags]`.

    python -m training.classify --task digits              # Switch ViT, MNIST
    python -m training.classify --task digits --experts 0  # its dense twin
    python -m training.classify --task genre               # SwitchEncoder, genres
    python -m training.classify --config run.json          # flags as JSON

The language model's sibling: the same strategies (`--strategy`,
`--cpu-devices`), precision policy, crash-safe backups (rerun the same
command to resume), concise progress bar, TensorBoard, `history.csv`, loss
and expert-load plots. Writes to --output (default `runs/<task>`):
`model.keras`, `labels.txt`, `vocab.txt` (genre), `serving/<task>/<version>/`
(a SavedModel with `serving_default` predict, `classify` for TF Serving's
`:classify` and `route`: `tf_switch.classifier_export`) and `results.json`
(test accuracy, parameters, FLOPs per token).
"""

import dataclasses
import json
import logging
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_switch import text
from tf_switch.classifier_export import ImageInput, TextInput, export_classifier
from tf_switch.distribute import (
    StrategyUnavailableError,
    is_chief,
    resolve_strategy,
    split_cpu,
)
from tf_switch.models import (
    SwitchEncoder,
    SwitchViT,
    get_preset,
    parameter_and_flop_counts,
)
from tf_switch.schedules import WarmupSchedule

from . import plots
from .callbacks import ExpertLoadRecorder, ResumableBackupAndRestore
from .config import (
    CLASSIFICATION_TASKS,
    ClassifyConfig,
    build_parser,
    parse_args,
)
from .precision import warn_if_slow_bfloat16
from .progress import ConciseProgbar
from .train import read_history

logger = logging.getLogger("training")

__all__ = ["ClassifyConfig", "TextTask", "load_task", "main", "train_classifier"]


def load_task(config):
    """The run's `LabelledSplit` (fetched and cached on first use)."""
    if config.task == "digits":
        from .digits import load_digits

        return load_digits()
    from .genres import load_genres

    return load_genres()


def build_model_config(config, sequence_length=None, vocab_size=None):
    """The preset with the run's overrides; experts=0 gives the dense twin."""
    preset = config.preset or CLASSIFICATION_TASKS[config.task][0]
    model_config = get_preset(preset)
    if sequence_length:
        model_config = model_config.replace(sequence_length=sequence_length)
    if vocab_size:
        model_config = model_config.replace(vocab_size=vocab_size)
    if config.experts is not None:
        model_config = model_config.replace(num_experts=config.experts or None)
    if model_config.num_experts is None:
        return model_config.dense_twin()
    return model_config.replace(
        switch_options=model_config.switch_options.replace(**config.switch_overrides())
    )


@dataclasses.dataclass
class TextTask:
    """Passages as padded word-piece ids; the passages that do not fit the
    model's positions are left out of the data set (and counted)."""

    tokenizer: text.WordPieceTokenizer
    sequence_length: int

    @classmethod
    def build(cls, train_texts, config, output):
        path = os.path.join(output, "vocab.txt")
        if not os.path.exists(path):
            tokenizer = text.WordPieceTokenizer(
                text.build_vocabulary(
                    ["\n".join(train_texts)], vocab_size=config.vocab_size
                )
            )
            tokenizer.save_vocabulary(path + ".tmp")
            os.replace(path + ".tmp", path)
        return cls(text.WordPieceTokenizer(path), config.sequence_length)

    def encode(self, texts, labels, what):
        ids = self.tokenizer.tokenize(tf.constant(list(texts)))
        fits = (ids.row_lengths() <= self.sequence_length).numpy()
        if not fits.all():
            logger.info(
                "%s: %d of %d passages are longer than %d word pieces and are "
                "left out.",
                what,
                int((~fits).sum()),
                len(fits),
                self.sequence_length,
            )
        padded = ids.to_tensor(
            default_value=text.PAD_ID, shape=[None, self.sequence_length]
        )
        return padded.numpy()[fits], labels[fits]


def _dataset(inputs, labels, batch_size, shuffle_seed=None):
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(labels), seed=shuffle_seed)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _build_model(config, model_config, num_classes):
    if config.task == "digits":
        return SwitchViT(model_config, num_classes=num_classes)
    return SwitchEncoder(model_config, num_classes=num_classes)


def train_classifier(config, data=None, strategy=None):
    """Runs a classification job; returns `(model, results)`.

    Args:
        config: a `training.config.ClassifyConfig`.
        data: a `training.digits.LabelledSplit` of the task's inputs (images
            `[n, 28, 28, 1]` or passage strings); default `load_task(config)`.
        strategy: one already made; None resolves `config.strategy`.

    Example (a notebook or a test):

        model, results = train_classifier(ClassifyConfig(task="digits", epochs=1))
    """
    if config.cpu_devices:
        split_cpu(config.cpu_devices)
    output = config.output_dir
    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    warn_if_slow_bfloat16(config.precision)
    strategy = strategy or resolve_strategy(config.strategy)
    chief = is_chief(strategy)
    data = data or load_task(config)
    logger.info("Data: %s", data)

    parts = {"train": data.train, "validation": data.validation, "test": data.test}
    if config.task == "genre":
        task = TextTask.build(data.train[0], config, output)
        parts = {name: task.encode(*part, name) for name, part in parts.items()}
        model_config = build_model_config(
            config, config.sequence_length, task.tokenizer.vocab_size
        )
        model_input = TextInput(task.tokenizer)
    else:
        model_config = build_model_config(config)
        model_input = ImageInput()
    steps_per_epoch = -(-len(parts["train"][1]) // config.batch_size)
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    train_data = _dataset(*parts["train"], config.batch_size, config.seed)
    train_data = train_data.take(steps_per_epoch).repeat()

    with strategy.scope():
        model = _build_model(config, model_config, len(data.labels))
        model.compile(
            optimizer=keras.optimizers.Adam(
                WarmupSchedule(
                    config.learning_rate,
                    warmup_steps=config.warmup_steps,
                    total_steps=steps_per_epoch * config.epochs,
                    decay="cosine",
                )
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    load_recorder = ExpertLoadRecorder(os.path.join(output, "expert_load.json"))
    callbacks = [
        ResumableBackupAndRestore(os.path.join(output, "backup"), write=chief),
        keras.callbacks.TerminateOnNaN(raise_error=True),
        ConciseProgbar(),
    ]
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(os.path.join(output, "tensorboard")),
            keras.callbacks.CSVLogger(os.path.join(output, "history.csv"), append=True),
            load_recorder,
        ]
    model.fit(
        train_data,
        steps_per_epoch=steps_per_epoch,
        validation_data=_dataset(*parts["validation"], config.batch_size),
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the data set is shuffled by the run's seed
        verbose=2 if not sys.stdout.isatty() else "auto",
    )
    test_loss, test_accuracy = model.evaluate(
        _dataset(*parts["test"], config.batch_size), verbose=0, return_dict=False
    )[:2]
    counts = parameter_and_flop_counts(model_config)
    results = {
        "task": config.task,
        "source": data.source,
        "experts": model_config.num_experts or 0,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "test_examples": len(parts["test"][1]),
        "majority_class_accuracy": float(
            np.bincount(parts["test"][1]).max() / len(parts["test"][1])
        ),
        "parameters": int(model.count_params()),
        # The transformer stack's, per token (patch or word piece): the
        # embeddings and the head are the same for a model and its twin.
        "stack_flops_per_token": counts["flops_per_token"]
        - 2 * model_config.hidden_dim * model_config.vocab_size,
        "seed": config.seed,
    }
    if not chief:
        return model, results
    model.save(os.path.join(output, "model.keras"))
    with open(os.path.join(output, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{label}\n" for label in data.labels))
    results["export"] = export_classifier(
        model,
        model_input,
        data.labels,
        os.path.join(output, "serving"),
        model_name=config.task,
    )
    plots.plot_losses(
        read_history(os.path.join(output, "history.csv")),
        os.path.join(output, "loss.png"),
    )
    if model_config.num_experts:
        plots.plot_expert_load(
            load_recorder.history, os.path.join(output, "expert_load.png")
        )
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return model, results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser(
        ClassifyConfig,
        prog="python -m training.classify",
        description="Train a Switch classifier (images or text).",
    )
    config = parse_args(argv, parser, ClassifyConfig)
    try:
        _, results = train_classifier(config)
    except StrategyUnavailableError as error:
        raise SystemExit(f"--strategy {config.strategy}: {error}") from error
    print(
        f"\nTest accuracy {results['test_accuracy']:.4f} on "
        f"{results['test_examples']} examples (majority class "
        f"{results['majority_class_accuracy']:.4f}).\nSavedModel: "
        f"{results['export']}"
    )


if __name__ == "__main__":
    main()
