"""SavedModel export for TensorFlow Serving.

    from tf_switch.export import export_for_serving
    path = export_for_serving(model, tokenizer, "exports", model_name="switch")
    # exports/switch/1/ (the next free version), written atomically

Signatures (all `tensorflow/serving/predict`, float32 / int32 / string in and
out, never bfloat16, every output batch-major):

- `serving_default`: `token_ids <int32>[batch, length]` (right-padded with
  `[PAD]` = 0) -> `logits <float32>[batch, length, vocab]` and `next_token
  <int32>[batch]`, the most probable token after each row's last non-padding
  token. Full logits are large (a row of 64 tokens over a 2,000-token
  vocabulary is about 2.5 MB of JSON); ask for them only when needed.
- `next_token`: `token_ids` -> `next_token <int32>[batch]` (as above),
  `top_tokens <int32>[batch, k]` and `top_log_probs <float32>[batch, k]`
  (the k = min(10, vocab) most probable next tokens and their
  log-probabilities, most probable first): the common call, at about 300
  bytes of JSON a row whatever the vocabulary.
- `generate`: `prompt <string>[batch]`, `max_new_tokens <int32>[batch]`,
  `temperature <float32>[batch]` (0: greedy), `top_k <int32>[batch]` (0:
  off), `top_p <float32>[batch]` (1.0: off) and `seed <int32>[batch]` ->
  `text <string>[batch]` (prompt and continuation, tokenized and detokenized
  in the graph with tensorflow-text), `token_ids <int32>[batch, width]` (the
  new tokens, -1 after each row's end; width = the largest max_new_tokens)
  and, for a model with Switch layers, `expert <int32>[batch, width,
  layers]` (each new token's expert in each Switch layer, as `route` would
  report it). A key/value cache in the graph: one prefill of the prompt,
  then one position per new token (`tf_switch.models.decoding`). A row ends
  at [EOS] or after its max_new_tokens, independently of the others; prompt
  (plus [BOS]) and new tokens must fit the model's positions. Sampling
  (`tf_switch.sampling`) is seeded by each row's own prompt and seed, so a
  request gets the same text alone or batched with others, every time.
- `route`: `token_ids` -> `expert <int32>[batch, length, layers]` (each Switch
  layer's expert for each token, -1 when dropped) and `probability
  <float32>[batch, length, layers]` (its router probability); not in the
  export of a dense model.

Serving routes each sequence as its own group and dropless (no expert
capacity), so a sequence's outputs never depend on the other sequences of its
batch, and decoding one token at a time routes as the full pass does. Inputs
are validated in the graph: ids in [0, vocab), 1 <= length <= the model's
sequence length; a violation is an INVALID_ARGUMENT error (HTTP 400), never a
silent wrap or zero.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_switch import text
from tf_switch.models.decoding import CachedDecoder, inference_model
from tf_switch.models.generation import generate_tokens
from tf_switch.models.routes import route_tokens

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
NEXT_TOKEN_TOP_K = 10  # `next_token`'s top_tokens / top_log_probs per row


def serving_model(model):
    """A float32 copy of a `SwitchLanguageModel` that routes per sequence,
    dropless: `tf_switch.models.decoding.inference_model`."""
    return inference_model(model)


class ServingModule(tf.Module):
    """The model, its tokenizer and the three signatures' functions."""

    def __init__(self, model, tokenizer):
        super().__init__(name="switch_serving")
        self.model = serving_model(model)
        self.tokenizer = tokenizer
        self.sequence_length = self.model.input_shape[1]
        self.vocab_size = self.model.config.vocab_size
        self.decoder = CachedDecoder(self.model)

    def _checked_padded(self, token_ids):
        """Validates ids and length; returns ids padded to the model length."""
        length = tf.shape(token_ids)[1]
        checks = [
            tf.debugging.assert_greater_equal(
                length, 1, message="token_ids must hold at least one token"
            ),
            tf.debugging.assert_less_equal(
                length,
                self.sequence_length,
                message=f"token_ids may hold at most {self.sequence_length} tokens",
            ),
            tf.debugging.assert_non_negative(
                token_ids, message="token ids must be >= 0"
            ),
            tf.debugging.assert_less(
                token_ids,
                self.vocab_size,
                message=f"token ids must be < the vocabulary size {self.vocab_size}",
            ),
        ]
        with tf.control_dependencies(checks):
            padded = tf.pad(token_ids, [[0, 0], [0, self.sequence_length - length]])
        return tf.ensure_shape(padded, [None, self.sequence_length])

    def _logits(self, token_ids):
        """(logits [B, length, V], each row's logits after its last token)."""
        length = tf.shape(token_ids)[1]
        logits = self.model(self._checked_padded(token_ids), training=False)
        logits = logits[:, :length]
        # The last non-padding position of each row (0 for an all-padding row).
        positions = tf.range(1, length + 1)[None, :]
        last = tf.reduce_max(tf.where(token_ids != text.PAD_ID, positions, 1), axis=1)
        return logits, tf.gather(logits, last - 1, batch_dims=1)  # [B, V]

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, "token_ids")])
    def serve(self, token_ids):
        logits, last_logits = self._logits(token_ids)
        next_token = tf.argmax(last_logits, axis=-1, output_type=tf.int32)
        return {"logits": logits, "next_token": next_token}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, "token_ids")])
    def next_token(self, token_ids):
        _, last_logits = self._logits(token_ids)
        k = min(NEXT_TOKEN_TOP_K, self.vocab_size)
        # top_k puts the lower index first among ties, as argmax picks it.
        top_log_probs, top_tokens = tf.math.top_k(tf.nn.log_softmax(last_logits), k)
        return {
            "next_token": top_tokens[:, 0],
            "top_tokens": top_tokens,
            "top_log_probs": top_log_probs,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, "token_ids")])
    def route(self, token_ids):
        length = tf.shape(token_ids)[1]
        expert, probability = route_tokens(self.model, self._checked_padded(token_ids))
        return {"expert": expert[:, :length], "probability": probability[:, :length]}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, "prompt"),
            tf.TensorSpec([None], tf.int32, "max_new_tokens"),
            tf.TensorSpec([None], tf.float32, "temperature"),
            tf.TensorSpec([None], tf.int32, "top_k"),
            tf.TensorSpec([None], tf.float32, "top_p"),
            tf.TensorSpec([None], tf.int32, "seed"),
        ]
    )
    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        prompt_ids = self.tokenizer.tokenize(prompt)
        batch = tf.shape(prompt)[0]
        bos = tf.fill([batch, 1], tf.constant(text.BOS_ID, tf.int32))
        prompt_ids = tf.concat([bos, prompt_ids], axis=1)
        lengths = prompt_ids.row_lengths()  # int64: no overflow below
        window = self.sequence_length
        checks = _generate_checks(
            batch, lengths, window, max_new_tokens, temperature, top_k, top_p, seed
        )
        with tf.control_dependencies(checks):
            tokens = prompt_ids.to_tensor(
                default_value=text.PAD_ID, shape=[None, window]
            )
            lengths = tf.cast(lengths, tf.int32)
        out = generate_tokens(
            self.decoder,
            tokens,
            lengths,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            end_id=text.EOS_ID,
            suppressed_ids=(text.PAD_ID, text.BOS_ID),
        )
        new_ids = tf.RaggedTensor.from_tensor(
            out["token_ids"], lengths=out["num_tokens"]
        )
        completed = tf.concat([prompt_ids, new_ids], axis=1)
        outputs = {
            "text": self.tokenizer.detokenize(completed),
            "token_ids": out["token_ids"],
        }
        if self.decoder.num_switch_layers:
            outputs["expert"] = out["expert"]
        return outputs


def _generate_checks(
    batch, lengths, window, max_new_tokens, temperature, top_k, top_p, seed
):
    """The `generate` signature's input checks (INVALID_ARGUMENT each)."""
    checks = [
        tf.debugging.assert_equal(
            tf.shape(value)[0], batch, message=f"one {name} per prompt"
        )
        for name, value in (
            ("max_new_tokens", max_new_tokens),
            ("temperature", temperature),
            ("top_k", top_k),
            ("top_p", top_p),
            ("seed", seed),
        )
    ]
    # In int64 and as a difference: start + max_new_tokens could overflow.
    room = tf.constant(window, tf.int64) - lengths
    return checks + [
        tf.debugging.assert_non_negative(
            max_new_tokens, message="max_new_tokens must be >= 0"
        ),
        tf.debugging.assert_less_equal(
            tf.cast(max_new_tokens, tf.int64),
            room,
            message=(
                f"the prompt tokens (plus [BOS]) and max_new_tokens must fit "
                f"the {window} positions of the model"
            ),
        ),
        tf.debugging.assert_non_negative(
            temperature, message="temperature must be >= 0 (0: greedy)"
        ),
        tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0: off)"),
        tf.debugging.Assert(
            tf.reduce_all((top_p > 0) & (top_p <= 1)),
            ["top_p must be in (0, 1] (1: off)"],
        ),
    ]


def next_version(model_dir):
    # ASCII digits only, as TF Serving reads version directories ('²' and
    # '٥' pass str.isdigit()).
    versions = [
        int(name) for name in os.listdir(model_dir) if name.isascii() and name.isdigit()
    ]
    return max(versions, default=0) + 1


def new_version_dirs(base_dir, model_name, version=None):
    """`(final, temporary)` directories of a new version of `model_name`.

    The export is written to `temporary` (beside `final`, on the same file
    system) and renamed to `final`, so TF Serving, which polls the base
    path, never sees a half-written version.

    Raises:
        FileExistsError: the version exists (TF Serving versions are
            immutable).
    """
    model_dir = os.path.join(base_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    version = version or next_version(model_dir)
    final_dir = os.path.join(model_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(
            f"{final_dir} exists; TF Serving versions are immutable. Pass another "
            "version, or none for the next free one."
        )
    return final_dir, tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir)


def write_warmup_requests(export_dir, model_name, signatures, inputs):
    """`assets.extra/tf_serving_warmup_requests`: PredictionLog records that TF
    Serving replays at load time, so the first real request is not slow.

    One record per signature in `signatures`, each with the same `inputs`
    ({name: numpy array}); a record for a signature the export lacks would
    make TF Serving refuse the version."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in signatures:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_for_serving(model, tokenizer, base_dir, model_name="switch", version=None):
    """Writes `<base_dir>/<model_name>/<version>/` for TensorFlow Serving.

    The SavedModel is written to a temporary directory beside it and renamed
    into place, so TF Serving (which polls the base path) never sees a
    half-written version.

    Args:
        model: a trained `SwitchLanguageModel` (any dtype policy).
        tokenizer: its `tf_switch.text.WordPieceTokenizer` (the vocabulary
            becomes an asset of the export).
        base_dir: the parent of the model's directory: the version goes to
            `base_dir/model_name/<version>`, and `base_dir/model_name` is TF
            Serving's `--model_base_path`.
        model_name: the served model's name.
        version: an int; default the next free version.

    Returns:
        The version directory.
    """
    final_dir, temporary = new_version_dirs(base_dir, model_name, version)
    module = ServingModule(model, tokenizer)
    # Keras' ExportArchive tracks the model's variables the way the TF1
    # loader (TF Serving's) restores them; a plain tf.saved_model.save of a
    # module holding a Keras 3 model does not.
    archive = keras.export.ExportArchive()
    archive.track(module.model)
    archive.track(tokenizer)
    endpoints = {
        "serving_default": module.serve,
        "next_token": module.next_token,
        "generate": module.generate,
    }
    config = module.model.config
    if any(config.is_sparse(index) for index in range(config.num_layers)):
        endpoints["route"] = module.route  # a dense twin has no routing
    for name, function in endpoints.items():
        archive.add_endpoint(name, function)
    archive.write_out(temporary, verbose=False)
    token_signatures = [name for name in endpoints if name != "generate"]
    ids = np.full((1, module.sequence_length), text.BOS_ID, np.int32)
    write_warmup_requests(temporary, model_name, token_signatures, {"token_ids": ids})
    os.rename(temporary, final_dir)
    return final_dir
