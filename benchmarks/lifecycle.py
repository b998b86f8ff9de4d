"""The MoE lifecycle on the tiny preset: upcycling, a shared expert, expert
pruning and distillation, each run by the project's own command-line tools.

    .venv/bin/python benchmarks/lifecycle.py                  # about 30 min on 2 cores
    .venv/bin/python benchmarks/lifecycle.py --steps-per-epoch 150 --seed 1

Runs (each `python -m training.train` in its own process, same data, seed
and schedule; into `--output/<name>`, skipped when its `model.keras` exists):

- `dense`, `switch` (8 experts, top-1), `shared` (top-1 plus a gated shared
  expert as wide as an expert) and `top2` (8 experts, top-2, capacity 2.5):
  `--epochs` x `--steps-per-epoch` steps from scratch. `shared` and `top2`
  cost the same FLOPs per token (two FFNs in each sparse layer).
- `dense_more` (`--init-from dense`, `--experts 0`) and `upcycled`
  (`--init-from dense`, `--experts 8`): `--extra-epochs` more epochs each.
- `student`: dense, from scratch, `--distill-from switch`
  (`--distill-weight 0.75`).
- `pruned`: `python -m training.prune switch/model.keras --keep 4 2 1`.

Prints markdown tables (recorded in benchmarks/RESULTS.md) and writes them to
`--output/lifecycle.md`.
"""

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import time


def history(output):
    with open(os.path.join(output, "history.csv")) as f:
        return [float(row["val_perplexity"]) for row in csv.DictReader(f)]


def run(module, args, *flags):
    command = [sys.executable, "-m", module, *flags]
    print("$", " ".join(["python", "-m", module, *flags]), flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def wait_for_other_process(output):
    """Waits while another process trains into `output` (its pid in
    `output/.running`), so two benchmark processes can share runs."""
    lock = os.path.join(output, ".running")
    while os.path.exists(lock):
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
        try:
            os.kill(pid, 0)
        except (OSError, ValueError):
            os.remove(lock)  # its process is gone
            return
        time.sleep(20)


def train(name, args, *flags, epochs=None, steps=None):
    output = os.path.join(args.output, name)
    wait_for_other_process(output)
    vocabulary = os.path.join(args.output, "dense", "vocab.txt")
    if os.path.exists(vocabulary) and not os.path.exists(output):
        # The job builds the same vocabulary from the same corpus: skip that.
        os.makedirs(output)
        shutil.copyfile(vocabulary, os.path.join(output, "vocab.txt"))
    if not os.path.exists(os.path.join(output, "model.keras")):
        with open(os.path.join(output, ".running"), "w") as f:
            f.write(str(os.getpid()))
        seconds = run(
            "training.train",
            args,
            "--output",
            output,
            "--epochs",
            str(epochs or args.epochs),
            "--steps-per-epoch",
            str(steps or args.steps_per_epoch),
            "--batch-size",
            str(args.batch_size),
            "--validation-steps",
            str(args.validation_steps),
            "--warmup-steps",
            str(args.warmup_steps),
            "--seed",
            str(args.seed),
            "--sample-tokens",
            "0",
            *flags,
        )
        os.remove(os.path.join(output, ".running"))
        print(f"  {name}: {seconds:.0f} s", flush=True)
    return history(output)


def model_path(args, name):
    return os.path.join(args.output, name, "model.keras")


def kept_gain(dense, teacher, student):
    """Share of the teacher's gain over dense that the student keeps, in
    log-perplexity (loss) terms."""
    return (math.log(dense) - math.log(student)) / (math.log(dense) - math.log(teacher))


def curve(values):
    return " / ".join(f"{value:.1f}" for value in values)


PARTS = ("upcycle", "distill", "prune", "shared")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=60)
    parser.add_argument("--extra-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--validation-steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/lifecycle")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=PARTS,
        help="which comparisons (two processes can share the work)",
    )
    args = parser.parse_args()
    print("Command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    tables = []

    dense = train("dense", args, "--experts", "0")
    if "upcycle" in args.parts:
        tables.append(upcycling(args, dense))
    if "shared" in args.parts:
        tables.append(shared_expert(args, dense))
    if "distill" in args.parts:
        tables.append(distillation(args, dense))
    if "prune" in args.parts:
        tables.append(pruning(args))
    report = "\n\n".join(tables)
    print("\n" + report)
    with open(
        os.path.join(args.output, f"lifecycle-{'-'.join(args.parts)}.md"), "w"
    ) as f:
        f.write(report + "\n")


def step_zero(args):
    """The dense run and its upcycled copy on the validation batches, before
    any training: the same perplexity, logits equal to float rounding."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    from tf_switch import text
    from tf_switch.lifecycle import upcycle
    from tf_switch.metrics import Perplexity
    from training import corpus as corpus_lib
    from training.config import TrainConfig
    from training.train import build_datasets

    dense = keras.saving.load_model(model_path(args, "dense"))
    tokenizer = text.WordPieceTokenizer(os.path.join(args.output, "dense", "vocab.txt"))
    settings = TrainConfig(
        batch_size=args.batch_size,
        validation_steps=args.validation_steps,
        steps_per_epoch=1,
    )
    _, validation = build_datasets(
        corpus_lib.load_corpus(None), tokenizer, dense.config, settings
    )
    sparse = upcycle(dense, 8)
    worst = 0.0
    for x, _ in validation.dataset():
        difference = np.abs(np.asarray(sparse(x)) - np.asarray(dense(x))).max()
        worst = max(worst, float(difference))
    lines = []
    for name, model in (("dense", dense), ("upcycled", sparse)):
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[Perplexity()],
        )
        result = model.evaluate(validation.dataset(), verbose=0, return_dict=True)
        lines.append(f"{name + ' val perplexity':<23} {result['perplexity']}")
    lines.append(f"max |logit difference|  {worst}")
    return "\n".join(lines)


def upcycling(args, dense):
    at_step_zero = step_zero(args)
    init = ["--init-from", model_path(args, "dense")]
    dense_more = train(
        "dense_more", args, *init, "--experts", "0", epochs=args.extra_epochs
    )
    upcycled = train(
        "upcycled", args, *init, "--experts", "8", epochs=args.extra_epochs
    )
    extra = args.extra_epochs * args.steps_per_epoch
    return "\n".join(
        [
            "Upcycled at step 0:",
            "",
            "```",
            at_step_zero,
            "```",
            "",
            f"Upcycling: {extra} more steps from the dense run "
            f"(val perplexity after {args.epochs * args.steps_per_epoch} steps: "
            f"{dense[-1]:.1f})",
            "",
            "| continued as | val perplexity per extra epoch | final |",
            "|---|---|---|",
            f"| dense | {curve(dense_more)} | {dense_more[-1]:.1f} |",
            f"| Switch-8 upcycled (top-2, normalized gates) | {curve(upcycled)} "
            f"| {upcycled[-1]:.1f} |",
        ]
    )


def switch_run(args):
    """The plain Switch-8 run (another process may be training it)."""
    return train("switch", args, "--experts", "8")


def distillation(args, dense):
    switch = switch_run(args)
    student = train(
        "student",
        args,
        "--experts",
        "0",
        "--distill-from",
        model_path(args, "switch"),
        "--distill-weight",
        "0.75",
    )
    return "\n".join(
        [
            "Distillation into the dense twin (0.25 hard / 0.75 soft)",
            "",
            "| model | val perplexity per epoch | final |",
            "|---|---|---|",
            f"| dense, trained alone | {curve(dense)} | {dense[-1]:.1f} |",
            f"| Switch-8 teacher | {curve(switch)} | {switch[-1]:.1f} |",
            f"| dense student | {curve(student)} | {student[-1]:.1f} |",
            "",
            f"Kept gain (log-perplexity): "
            f"{kept_gain(dense[-1], switch[-1], student[-1]):.0%}",
        ]
    )


def pruning(args):
    switch_run(args)
    pruned = os.path.join(args.output, "pruned")
    if not os.path.exists(os.path.join(pruned, "pruning.md")):
        run(
            "training.prune",
            args,
            model_path(args, "switch"),
            "--keep",
            "4",
            "2",
            "1",
            "--output",
            pruned,
            "--validation-steps",
            str(args.validation_steps),
            "--batch-size",
            str(args.batch_size),
        )
    with open(os.path.join(pruned, "pruning.md")) as f:
        return "Pruning the Switch-8 run\n\n" + f.read().strip()


def shared_expert(args, dense):

    shared = train(
        "shared",
        args,
        "--experts",
        "8",
        "--shared-expert-dim",
        "256",
        "--shared-expert-gate",
    )
    top2 = train(
        "top2", args, "--experts", "8", "--top-k", "2", "--capacity-factor", "2.5"
    )
    switch = switch_run(args)
    return "\n".join(
        [
            "Shared expert against plain Switch",
            "",
            "| model | FFNs per token (sparse layers) | val perplexity per epoch "
            "| final |",
            "|---|---|---|---|",
            f"| Switch-8, top-1 | 1 | {curve(switch)} | {switch[-1]:.1f} |",
            f"| Switch-8, top-1 + gated shared expert | 2 | {curve(shared)} "
            f"| {shared[-1]:.1f} |",
            f"| Switch-8, top-2 | 2 | {curve(top2)} | {top2[-1]:.1f} |",
            f"| dense | 1 | {curve(dense)} | {dense[-1]:.1f} |",
        ]
    )


if __name__ == "__main__":
    main()
