"""Export a trained model for TensorFlow Serving: `python -m serving.export`.

    python -m serving.export --model runs/demo/model.keras \\
        --vocabulary runs/demo/vocab.txt --base-dir exports --name switch
    # -> exports/switch/<next version>/, ready for --model_base_path=exports/switch

Then check it the way TF Serving loads it:

    python -m serving.fidelity check exports/switch/1
"""

import argparse
import sys

import keras

import tf_switch  # noqa: F401  (registers the classes in the .keras file)
from tf_switch import text
from tf_switch.export import export_for_serving

from . import fidelity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a SwitchLanguageModel .keras")
    parser.add_argument("--vocabulary", required=True, help="its vocab.txt")
    parser.add_argument("--base-dir", required=True, help="parent of <name>/<version>")
    parser.add_argument("--name", default="switch", help="the served model name")
    parser.add_argument("--version", type=int, help="default: the next free one")
    parser.add_argument(
        "--skip-check", action="store_true", help="skip the op and signature check"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = keras.saving.load_model(args.model, compile=False)
    tokenizer = text.WordPieceTokenizer(args.vocabulary)
    if tokenizer.vocab_size != model.config.vocab_size:
        sys.exit(
            f"{args.vocabulary} has {tokenizer.vocab_size} tokens but the model "
            f"expects {model.config.vocab_size}: is it the model's vocabulary?"
        )
    path = export_for_serving(
        model, tokenizer, args.base_dir, model_name=args.name, version=args.version
    )
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
