"""Sample text from a trained language model: `python -m training.generate`.

    python -m training.generate --model runs/demo/model.keras \\
        --vocabulary runs/demo/vocab.txt --prompt "ROMEO:" --max-new-tokens 40 \\
        --temperature 0.8 --top-k 40 --stop "\\n\\n"

The same decoding as the SavedModel's `generate` signature and the training
demo's sample: a dropless float32 copy of the model (`inference_model`), a
key/value cache (`CachedDecoder`), one sampler (`tf_switch.sampling`), ending
at [EOS], at the stop string or after `max_new_tokens`.
"""

import argparse

import keras
import tensorflow as tf

import tf_switch  # noqa: F401  (registers the layers for load_model)
from tf_switch import text
from tf_switch.models import generation
from tf_switch.models.decoding import CachedDecoder, inference_model


def decoder_for(model):
    """A `CachedDecoder` on a dropless, float32, single-device copy of `model`.

    A copy, so that sampling never updates the trained model's routing
    metrics (which a multi-worker strategy would synchronize with workers
    that have stopped) and never routes with training capacity.
    """
    return CachedDecoder(inference_model(model))


def sample_text(
    decoder,
    tokenizer,
    prompt,
    max_new_tokens,
    temperature=0.8,
    top_k=0,
    top_p=1.0,
    seed=0,
    stop="",
):
    """The prompt and its sampled continuation, as text.

    Args:
        decoder: from `decoder_for`.
        tokenizer: the model's `tf_switch.text.WordPieceTokenizer`.
        prompt: a string; [BOS] is put before it.
        max_new_tokens: prompt ([BOS] included) plus new tokens must fit the
            model's positions (`decoder.context_length`).
        temperature, top_k, top_p, seed: see `tf_switch.sampling.sample`.
        stop: a string that ends the sample (e.g. "\\n\\n", a blank line),
            kept in the text; "" for none.

    Raises:
        ValueError: when prompt and new tokens do not fit the context.
    """
    ids = tokenizer.tokenize(tf.constant([prompt])).numpy()[0].tolist()
    stop_ids = tokenizer.tokenize(tf.constant([stop])).numpy()[0].tolist()
    (completed,) = generation.generate(
        decoder,
        [[text.BOS_ID, *ids]],
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        end_id=text.EOS_ID,
        stop_ids=stop_ids,
        suppressed_ids=(text.PAD_ID, text.BOS_ID),
    )
    return tokenizer.detokenize(tf.ragged.constant([completed])).numpy()[0].decode()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Sample text from a trained Switch language model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a .keras checkpoint")
    parser.add_argument("--vocabulary", required=True, help="its vocab.txt")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop",
        default="",
        help='a stop string; "\\n" is a newline: "\\n\\n" ends at a blank line',
    )
    args = parser.parse_args(argv)
    tokenizer = text.WordPieceTokenizer(args.vocabulary)
    decoder = decoder_for(keras.saving.load_model(args.model))
    try:
        sample = sample_text(
            decoder,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop.replace("\\n", "\n"),
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(sample)
    return sample


if __name__ == "__main__":
    main()
