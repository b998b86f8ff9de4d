"""Generation speed: cached decoding vs the full-window loop, Switch vs dense.

    .venv/bin/python benchmarks/generate_speed.py                 # all rows
    .venv/bin/python benchmarks/generate_speed.py --batches 1 --new-tokens 32

For the `tiny` Switch LM (4 blocks, 8 experts in blocks 1 and 3, vocabulary
2,000) and its dense twin, with a context of `--context` positions (the
smallest that holds a short prompt and 128 new tokens), exports two
SavedModels each: the `generate` signature (key/value cache, one position per
new token) and a baseline with the loop `generate` had before it, which re-ran
the whole window for every new token (routing as before: eval capacity 2.0,
not dropless). Each is timed in process (`loaded.signatures["generate"]`) and
through the local REST server on 127.0.0.1 (JSON, keep-alive), greedy, for
batch 1, 8 and 32, `--new-tokens` each; per-token latency is a call's time over
its new tokens per row, tokens/s counts every row's tokens.

The weights are untrained (speed does not depend on them); the [EOS]
embedding is zeroed, so its logit is 0 while the others are not, so no row
ends early and every call makes exactly `--new-tokens` tokens per row.
"""

import argparse
import http.client
import itertools
import json
import os
import statistics
import string
import sys
import tempfile
import threading
import time

import keras
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from serving import server as server_lib  # noqa: E402
from tf_switch import text  # noqa: E402
from tf_switch.export import export_for_serving  # noqa: E402
from tf_switch.models import SwitchLanguageModel, get_preset  # noqa: E402

PROMPT = "the king and the fool"


def vocabulary(size):
    """Reserved tokens, letters, suffix letters, then letter pairs/triples."""
    letters = string.ascii_lowercase
    tokens = list(text.RESERVED_TOKENS) + list(letters)
    tokens += [text.SUFFIX_INDICATOR + c for c in letters]
    for n in (2, 3):
        for combo in itertools.product(letters, repeat=n):
            if len(tokens) == size:
                return tokens
            tokens.append("".join(combo))
    return tokens


class FullWindowGenerate(tf.Module):
    """The `generate` loop before cached decoding: every new token re-runs
    the model on the whole right-padded window, greedy or sampled."""

    def __init__(self, model, tokenizer):
        super().__init__()
        config = model.config
        # Per-sequence groups at the training run's evaluation capacity, as
        # the export routed before cached decoding.
        options = config.switch_options.replace(group_size=None, expert_parallel=False)
        self.model = SwitchLanguageModel(config.replace(switch_options=options))
        self.model.set_weights(model.get_weights())
        self.tokenizer = tokenizer
        self.window = config.sequence_length

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, "prompt"),
            tf.TensorSpec([None], tf.int32, "max_new_tokens"),
        ]
    )
    def generate(self, prompt, max_new_tokens):
        batch = tf.shape(prompt)[0]
        bos = tf.fill([batch, 1], tf.constant(text.BOS_ID, tf.int32))
        prompt_ids = tf.concat([bos, self.tokenizer.tokenize(prompt)], axis=1)
        start = tf.cast(prompt_ids.row_lengths(), tf.int32)
        tokens = prompt_ids.to_tensor(shape=[None, self.window])

        def step(index, tokens, lengths):
            logits = self.model(tokens, training=False)
            last = tf.gather(logits, lengths - 1, batch_dims=1)
            chosen = tf.argmax(last, axis=-1, output_type=tf.int32)
            active = index < max_new_tokens
            rows = tf.range(batch)
            position = tf.minimum(lengths, self.window - 1)
            updated = tf.tensor_scatter_nd_update(
                tokens, tf.stack([rows, position], 1), chosen
            )
            tokens = tf.where(active[:, None], updated, tokens)
            return index + 1, tokens, lengths + tf.cast(active, tf.int32)

        _, tokens, lengths = tf.while_loop(
            lambda index, *_: index < tf.reduce_max(max_new_tokens),
            step,
            [tf.constant(0), tokens, start],
        )
        completed = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
        return {"text": self.tokenizer.detokenize(completed)}


def export_baseline(model, tokenizer, base, name):
    module = FullWindowGenerate(model, tokenizer)
    archive = keras.export.ExportArchive()
    archive.track(module.model)
    archive.track(tokenizer)
    archive.add_endpoint("generate", module.generate)
    path = os.path.join(base, name, "1")
    archive.write_out(path, verbose=False)
    return path


def requests(batch, new_tokens, cached):
    inputs = {"prompt": [PROMPT] * batch, "max_new_tokens": [new_tokens] * batch}
    if cached:
        inputs |= {
            "temperature": [0.0] * batch,
            "top_k": [0] * batch,
            "top_p": [1.0] * batch,
            "seed": [0] * batch,
        }
    return inputs


def time_calls(call, warm_up, repeats):
    """Median seconds of `call` after one `warm_up` (a one-token request:
    it builds the graph without paying for a full decode)."""
    warm_up()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path, cached, batch, new_tokens, repeats):
    """(in-process seconds, REST seconds) per call."""
    loaded = tf.saved_model.load(path)
    generate = loaded.signatures["generate"]
    inputs = requests(batch, new_tokens, cached)
    short = requests(batch, 1, cached)

    def run(inputs):
        out = generate(**{k: tf.constant(v) for k, v in inputs.items()})
        if cached and inputs is not short:  # every row made every token
            made = tf.reduce_sum(tf.cast(out["token_ids"] >= 0, tf.int32), 1)
            assert int(tf.reduce_min(made)) == new_tokens, made

    local = time_calls(lambda: run(inputs), lambda: run(short), repeats)

    model_dir = os.path.dirname(path)
    name = os.path.basename(model_dir)
    server = server_lib.make_server(
        base_path=model_dir, model_name=name, port=0, poll_s=0, request_timeout_s=600
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=600)

    def post(inputs):
        body = json.dumps({"signature_name": "generate", "inputs": inputs}).encode()
        connection.request("POST", f"/v1/models/{name}:predict", body=body)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status

    try:
        remote = time_calls(lambda: post(inputs), lambda: post(short), repeats)
    finally:
        connection.close()
        server.shutdown()
        server.server_close()
    return local, remote


def build(dense, context, seed):
    keras.utils.set_random_seed(seed)
    config = get_preset("tiny", sequence_length=context)
    model = SwitchLanguageModel(config.dense_twin() if dense else config)
    embedding = model.get_layer("token_embedding").embeddings
    embedding.assign(
        tf.tensor_scatter_nd_update(
            embedding, [[text.EOS_ID]], tf.zeros([1, embedding.shape[1]])
        )
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=144)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print("Command:", " ".join(sys.argv))
    tokenizer = text.WordPieceTokenizer(vocabulary(2000))
    base = tempfile.mkdtemp(prefix="generate_speed_")
    rows = []
    for dense in (False, True):
        kind = "dense twin" if dense else "switch"
        model = build(dense, args.context, seed=0)
        name = kind.replace(" ", "_")
        cached_path = export_for_serving(model, tokenizer, base, f"{name}_cached")
        baseline_path = export_baseline(model, tokenizer, base, f"{name}_full")
        for batch in args.batches:
            for cached, path in ((True, cached_path), (False, baseline_path)):
                local, remote = measure(
                    path, cached, batch, args.new_tokens, args.repeats
                )
                row = (
                    kind,
                    "cached" if cached else "full window",
                    batch,
                    local,
                    remote,
                )
                rows.append(row)
                print_row(row, args.new_tokens, flush=True)
    print()
    print(
        "| model | loop | batch | in-process ms/token | tokens/s "
        "| REST ms/token | tokens/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print_row(row, args.new_tokens, markdown=True)
    summarize(rows, args.new_tokens)


def print_row(row, new_tokens, markdown=False, flush=False):
    kind, loop, batch, local, remote = row
    cells = [
        kind,
        loop,
        str(batch),
        f"{local / new_tokens * 1e3:.2f}",
        f"{batch * new_tokens / local:.0f}",
        f"{remote / new_tokens * 1e3:.2f}",
        f"{batch * new_tokens / remote:.0f}",
    ]
    if markdown:
        print("| " + " | ".join(cells) + " |")
    else:
        print(" ".join(f"{c:>12}" for c in cells), flush=flush)


def summarize(rows, new_tokens):
    table = {(k, loop, b): (local, remote) for k, loop, b, local, remote in rows}
    print()
    for kind in ("switch", "dense twin"):
        for batch in sorted({b for _, _, b, _, _ in rows}):
            cached = table.get((kind, "cached", batch))
            full = table.get((kind, "full window", batch))
            if cached and full:
                print(
                    f"{kind} batch {batch}: cached / full-window tokens/s = "
                    f"{full[0] / cached[0]:.1f}x in process, "
                    f"{full[1] / cached[1]:.1f}x REST"
                )
    for batch in sorted({b for _, _, b, _, _ in rows}):
        switch = table.get(("switch", "cached", batch))
        dense = table.get(("dense twin", "cached", batch))
        if switch and dense:
            print(
                f"batch {batch}: Switch / dense per-token latency (cached) = "
                f"{switch[0] / dense[0]:.2f} in process, "
                f"{switch[1] / dense[1]:.2f} REST"
            )
    for kind in ("switch", "dense twin"):
        one, eight = table.get((kind, "cached", 1)), table.get((kind, "cached", 8))
        if one and eight:
            print(
                f"{kind}: per-token time (per row) batch 8 / batch 1 = "
                f"{eight[0] / 8 / one[0]:.2f} in process; per step "
                f"{eight[0] / one[0]:.2f}"
            )


if __name__ == "__main__":
    main()
