"""Export a trained model for TensorFlow Serving: `python -m serving.export`.

    python -m serving.export --model runs/demo/model.keras \\
        --vocabulary runs/demo/vocab.txt --base-dir exports --name switch
    # -> exports/switch/<next version>/, ready for --model_base_path=exports/switch
    python -m serving.export --model runs/digits/model.keras --base-dir exports \\
        --name digits     # a classifier: labels.txt (one per line) beside it

A `SwitchLanguageModel` gets `tf_switch.export`'s signatures; a `SwitchViT`
or `SwitchEncoder` (with `--vocabulary`) gets `tf_switch.classifier_export`'s,
with the class names of `--labels` (default: `labels.txt` beside the model,
which `python -m training.classify` writes).

Then check it the way TF Serving loads it:

    python -m serving.fidelity check exports/switch/1
"""

import argparse
import os
import sys

import keras

import tf_switch  # noqa: F401  (registers the classes in the .keras file)
from tf_switch import text
from tf_switch.classifier_export import ImageInput, TextInput, export_classifier
from tf_switch.export import export_for_serving
from tf_switch.models import SwitchEncoder, SwitchViT

from . import fidelity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="a SwitchLanguageModel, SwitchEncoder or SwitchViT .keras",
    )
    parser.add_argument("--vocabulary", help="its vocab.txt (not for a SwitchViT)")
    parser.add_argument(
        "--labels",
        help="a classifier's class names, one per line (default: "
        "labels.txt beside --model)",
    )
    parser.add_argument("--base-dir", required=True, help="parent of <name>/<version>")
    parser.add_argument("--name", default="switch", help="the served model name")
    parser.add_argument("--version", type=int, help="default: the next free one")
    parser.add_argument(
        "--skip-check", action="store_true", help="skip the op and signature check"
    )
    return parser.parse_args(argv)


def _labels(args):
    path = args.labels or os.path.join(os.path.dirname(args.model), "labels.txt")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as error:
        sys.exit(f"A classifier needs its class names: cannot read {path} ({error}).")


def _tokenizer(args, model):
    if not args.vocabulary:
        sys.exit(f"{args.model} reads text: pass its --vocabulary (vocab.txt).")
    tokenizer = text.WordPieceTokenizer(args.vocabulary)
    if tokenizer.vocab_size != model.config.vocab_size:
        sys.exit(
            f"{args.vocabulary} has {tokenizer.vocab_size} tokens but the model "
            f"expects {model.config.vocab_size}: is it the model's vocabulary?"
        )
    return tokenizer


def main(argv=None):
    args = parse_args(argv)
    model = keras.saving.load_model(args.model, compile=False)
    where = {
        "base_dir": args.base_dir,
        "model_name": args.name,
        "version": args.version,
    }
    if isinstance(model, SwitchViT):
        path = export_classifier(model, ImageInput(), _labels(args), **where)
    elif isinstance(model, SwitchEncoder):
        model_input = TextInput(_tokenizer(args, model))
        path = export_classifier(model, model_input, _labels(args), **where)
    else:
        path = export_for_serving(model, _tokenizer(args, model), **where)
    print(path)
    if not args.skip_check:
        problems = fidelity.signature_lint(path) + [
            f"op not servable: {op}" for op in sorted(fidelity.disallowed_ops(path))
        ]
        if problems:
            sys.exit("\n".join(problems))
    return path


if __name__ == "__main__":
    main()
