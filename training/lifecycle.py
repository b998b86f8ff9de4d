"""The job's starting points besides random weights: `--init-from` (continue
or upcycle a dense run) and `--distill-from` (learn from a teacher run).

Both read a finished run of `python -m training.train`: its `model.keras` and
the `vocab.txt` beside it, which the new run reuses, so token ids mean the
same to both models.
"""

import os
import shutil

import keras

from tf_switch.lifecycle import UPCYCLING_OPTIONS, DistillationModel, upcycle

# The `ModelConfig` fields that must agree between a run and the run it
# starts from (everything but the FFNs' sparsity and regularization).
SHAPE_FIELDS = (
    "vocab_size",
    "sequence_length",
    "hidden_dim",
    "intermediate_dim",
    "num_layers",
    "num_heads",
    "activation",
    "tie_embeddings",
)
# What upcycling needs for exact outputs at step 0, unless a flag sets it.
UPCYCLING_DEFAULTS = (
    "top_k",
    "normalize_gates",
    "capacity_factor",
    "eval_capacity_factor",
)


def source_runs(config):
    """The model files this run starts from (`--init-from`, `--distill-from`)."""
    return [path for path in (config.init_from, config.distill_from) if path]


def reuse_vocabulary(config):
    """Copies the source run's `vocab.txt` into `--output` (once), so this run
    tokenizes as the model it starts from did.

    Raises:
        SystemExit: when a source model file or its vocabulary is missing, or
            two sources have different vocabularies.
    """
    vocabularies = []
    for path in source_runs(config):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no such model file (a run's model.keras).")
        vocabulary = os.path.join(os.path.dirname(os.path.abspath(path)), "vocab.txt")
        if not os.path.isfile(vocabulary):
            raise SystemExit(
                f"{path} has no vocab.txt beside it: expected the output "
                "directory of `python -m training.train`."
            )
        vocabularies.append(vocabulary)
    if not vocabularies:
        return
    texts = {open(path).read() for path in vocabularies}
    if len(texts) > 1:
        raise SystemExit(
            f"--init-from and --distill-from runs use different vocabularies: "
            f"{vocabularies}."
        )
    target = os.path.join(config.output, "vocab.txt")
    if not os.path.exists(target):
        shutil.copyfile(vocabularies[0], target)


def upcycling_overrides(config):
    """`SwitchOptions` fields that `--init-from` sets when no flag does."""
    given = config.switch_overrides()
    return {
        name: getattr(UPCYCLING_OPTIONS, name)
        for name in UPCYCLING_DEFAULTS
        if name not in given
    }


def check_same_shape(source_config, model_config, path, fields=SHAPE_FIELDS):
    """Raises SystemExit, naming each field of `fields` that differs."""
    mismatched = {
        name: (getattr(source_config, name), getattr(model_config, name))
        for name in fields
        if getattr(source_config, name) != getattr(model_config, name)
    }
    if mismatched:
        details = ", ".join(
            f"{name}: {theirs} there, {ours} here"
            for name, (theirs, ours) in mismatched.items()
        )
        raise SystemExit(
            f"{path} does not have this run's shape ({details}). Use the same "
            "--preset and --sequence-length as that run."
        )


def initial_model(model_config, config):
    """The model to train: new, or from `--init-from` (copied when this run
    is dense, upcycled when it is sparse). Call under the strategy's scope."""
    from tf_switch.models import SwitchLanguageModel

    if not config.init_from:
        return SwitchLanguageModel(model_config)
    dense = keras.saving.load_model(config.init_from)
    check_same_shape(dense.config, model_config, config.init_from)
    if dense.config.num_experts is not None:
        raise SystemExit(
            f"--init-from {config.init_from}: that model is already sparse "
            f"({dense.config.num_experts} experts); upcycling starts from a dense "
            "run (--experts 0)."
        )
    if model_config.num_experts is None:
        return upcycle(dense, None)
    return upcycle(
        dense,
        model_config.num_experts,
        switch_options=model_config.switch_options,
        sparse_every=model_config.sparse_every,
    )


def with_teacher(student, config):
    """`student` wrapped for `--distill-from`, else `student` itself. Call
    under the strategy's scope."""
    if not config.distill_from:
        return student
    teacher = keras.saving.load_model(config.distill_from)
    # The student may be smaller; it must read and predict the same tokens.
    check_same_shape(
        teacher.config,
        student.config,
        config.distill_from,
        fields=("vocab_size", "sequence_length"),
    )
    return DistillationModel(
        student,
        teacher,
        distill_weight=config.distill_weight,
        temperature=config.distill_temperature,
    )


def trained_model(model):
    """The model to save and export: the student of a distillation."""
    return model.student if isinstance(model, DistillationModel) else model
