import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tests.tiny_export import LENGTH, random_token_ids, tiny_model, tiny_tokenizer
from tf_switch import text
from tf_switch.export import WARMUP_FILE, export_for_serving, serving_model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    model = tiny_model(tokenizer)
    path = export_for_serving(model, tokenizer, tmp_path_factory.mktemp("exports"))
    return model, path, tf.saved_model.load(path)


def test_layout_and_signatures(exported):
    _, path, loaded = exported
    assert path.endswith(os.path.join("switch", "1"))
    assert sorted(loaded.signatures) == [
        "generate",
        "next_token",
        "route",
        "serving_default",
    ]
    for signature in loaded.signatures.values():
        for spec in signature.structured_outputs.values():
            assert spec.dtype in (tf.float32, tf.int32, tf.string)
    assert os.path.exists(os.path.join(path, "assets", "vocab.txt"))


def test_serving_default_matches_the_model_and_finds_the_next_token(exported):
    model, _, loaded = exported
    ids = random_token_ids(3, 7)
    ids[1, 4:] = text.PAD_ID  # a shorter, right-padded row
    out = loaded.signatures["serving_default"](token_ids=tf.constant(ids))
    padded = np.pad(ids, [[0, 0], [0, LENGTH - 7]])
    expected = serving_model(model)(padded)[:, :7]
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    last = [6, 3, 6]
    np.testing.assert_array_equal(
        out["next_token"], [np.argmax(expected[r, last[r]]) for r in range(3)]
    )


def test_next_token_is_serving_defaults_answer_without_the_logits(exported):
    # The cheap call (issue 13): the same next token, and the top 10
    # log-probabilities of each row's last position, most probable first.
    _, _, loaded = exported
    ids = random_token_ids(3, 7, seed=4)
    ids[1, 4:] = text.PAD_ID
    full = loaded.signatures["serving_default"](token_ids=tf.constant(ids))
    cheap = loaded.signatures["next_token"](token_ids=tf.constant(ids))
    assert sorted(cheap) == ["next_token", "top_log_probs", "top_tokens"]
    np.testing.assert_array_equal(cheap["next_token"], full["next_token"])
    last = [6, 3, 6]
    for row in range(3):
        log_probs = tf.nn.log_softmax(full["logits"][row, last[row]]).numpy()
        top = np.argsort(-log_probs, kind="stable")[:10]
        np.testing.assert_array_equal(cheap["top_tokens"][row], top)
        np.testing.assert_allclose(
            cheap["top_log_probs"][row], log_probs[top], rtol=1e-5, atol=1e-5
        )
    assert cheap["top_tokens"].shape == (3, 10)


def test_a_sequence_does_not_depend_on_its_batch(exported):
    _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    batch = random_token_ids(4, LENGTH, seed=1)
    # Row 3 comes second in its training group of two sequences: with
    # training groups, row 2 would take expert capacity before it.
    alone = serve(token_ids=tf.constant(batch[3:4]))["logits"]
    together = serve(token_ids=tf.constant(batch))["logits"][3:4]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    route = loaded.signatures["route"]
    np.testing.assert_array_equal(
        route(token_ids=tf.constant(batch[3:4]))["expert"],
        route(token_ids=tf.constant(batch))["expert"][3:4],
    )


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.array([[5, 500]], np.int32), "vocabulary size"),
        (np.array([[5, -1]], np.int32), ">= 0"),
        (np.zeros((1, LENGTH + 1), np.int32), "at most"),
        (np.zeros((1, 0), np.int32), "at least one"),
    ],
)
def test_invalid_token_ids_are_invalid_argument(exported, ids, message):
    _, _, loaded = exported
    for name in ("serving_default", "route"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[name](token_ids=tf.constant(ids))


def test_route_reports_each_switch_layers_expert(exported):
    _, _, loaded = exported
    out = loaded.signatures["route"](token_ids=tf.constant(random_token_ids(2, 5)))
    assert out["expert"].shape == (2, 5, 1)  # one Switch layer of two blocks
    expert = np.asarray(out["expert"])
    assert np.all((expert >= -1) & (expert < 4))
    probability = np.asarray(out["probability"])
    assert np.all((probability > 0.25 - 1e-6) & (probability <= 1.0))


def _generate_request(prompts, max_new_tokens, temperature=0.0, **options):
    size = len(prompts)

    def column(value, dtype):
        return tf.constant(np.broadcast_to(np.asarray(value, dtype), [size]))

    return {
        "prompt": tf.constant(prompts),
        "max_new_tokens": column(max_new_tokens, np.int32),
        "temperature": column(temperature, np.float32),
        "top_k": column(options.get("top_k", 0), np.int32),
        "top_p": column(options.get("top_p", 1.0), np.float32),
        "seed": column(options.get("seed", 0), np.int32),
    }


def test_generate_is_deterministic_and_validated(exported):
    _, _, loaded = exported
    generate = loaded.signatures["generate"]
    request = _generate_request(
        ["The king", "A fool loves"], [4, 2], [0.0, 1.0], top_k=[0, 5], seed=7
    )
    first = generate(**request)
    np.testing.assert_array_equal(first["text"], generate(**request)["text"])
    assert first["text"][0].numpy().decode().startswith("The king")
    assert first["text"][1].numpy().decode().startswith("A fool loves")
    token_ids = first["token_ids"].numpy()
    assert token_ids.shape == (2, 4) and np.all(token_ids[1, 2:] == -1)
    bad = [
        (dict(max_new_tokens=LENGTH), "must fit"),
        (dict(max_new_tokens=2**31 - 1), "must fit"),  # overflowed start + n
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ]
    for change, message in bad:
        request = _generate_request(["The king"], **{"max_new_tokens": 1, **change})
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            generate(**request)
    request = _generate_request(["The king"], 1)
    request["seed"] = tf.constant([1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one seed per prompt"):
        generate(**request)


def test_generate_equals_the_uncached_greedy_loop_and_reports_routing(
    exported, tokenizer
):
    _, _, loaded = exported
    prompts = ["The king", "A fool loves the"]
    out = loaded.signatures["generate"](**_generate_request(prompts, 5))
    serve, route = loaded.signatures["serving_default"], loaded.signatures["route"]
    for row, prompt in enumerate(prompts):
        ids = [text.BOS_ID, *tokenizer.tokenize(tf.constant([prompt]))[0].numpy()]
        new = [int(t) for t in out["token_ids"][row].numpy() if t >= 0]
        for token in new:  # the full window re-run for every token
            next_token = serve(token_ids=tf.constant([ids]))["next_token"][0]
            assert token == int(next_token) or token == text.EOS_ID
            ids.append(token)
        experts = route(token_ids=tf.constant([ids]))["expert"][0, -len(new) :]
        np.testing.assert_array_equal(out["expert"][row, : len(new)], experts)


def test_a_sampled_row_does_not_depend_on_its_batch(exported):
    _, _, loaded = exported
    generate = loaded.signatures["generate"]
    prompts = ["The king", "A fool loves", "The king and the fool"]
    options = dict(temperature=0.8, top_k=[0, 20, 0], top_p=[1.0, 1.0, 0.9], seed=3)
    batch = generate(**_generate_request(prompts, 5, **options))
    for row, prompt in enumerate(prompts):
        alone = generate(
            **_generate_request(
                [prompt],
                5,
                temperature=0.8,
                top_k=options["top_k"][row],
                top_p=options["top_p"][row],
                seed=3,
            )
        )
        np.testing.assert_array_equal(alone["token_ids"][0], batch["token_ids"][row])
        assert alone["text"][0] == batch["text"][row]
    # The seed changes the sample; the same seed repeats it.
    texts = {
        generate(**_generate_request(prompts[:1] * 2, 8, temperature=1.0, seed=s))[
            "text"
        ][0].numpy()
        for s in range(4)
    }
    assert len(texts) > 1


def test_warmup_requests_replay(exported):
    _, path, loaded = exported
    records = list(tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)))
    assert 1 <= len(records) <= 1000
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**inputs)


def test_a_model_without_switch_layers_warms_up_only_its_own_signatures(
    tokenizer, tmp_path
):
    # One block: the tiny preset's first Switch layer is block 1.
    path = export_for_serving(tiny_model(tokenizer, num_layers=1), tokenizer, tmp_path)
    loaded = tf.saved_model.load(path)
    assert "route" not in loaded.signatures
    records = list(tf.data.TFRecordDataset(os.path.join(path, WARMUP_FILE)))
    names = [
        prediction_log_pb2.PredictionLog.FromString(
            record.numpy()
        ).predict_log.request.model_spec.signature_name
        for record in records
    ]
    assert names == ["serving_default", "next_token"]


def test_versions_are_new_directories_written_whole(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    first = export_for_serving(model, tokenizer, tmp_path, model_name="m")
    second = export_for_serving(model, tokenizer, tmp_path, model_name="m")
    assert os.path.basename(first) == "1" and os.path.basename(second) == "2"
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]  # no temporary left
    with pytest.raises(FileExistsError, match="immutable"):
        export_for_serving(model, tokenizer, tmp_path, model_name="m", version=2)


def test_mixed_bfloat16_model_exports_float32_signatures(tokenizer, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = tiny_model(tokenizer)
    keras.mixed_precision.set_global_policy("float32")
    loaded = tf.saved_model.load(export_for_serving(model, tokenizer, tmp_path))
    out = loaded.signatures["serving_default"](
        token_ids=tf.constant(random_token_ids(1, 4))
    )
    assert out["logits"].dtype == tf.float32


@pytest.mark.parametrize("runner", ["c_api", "tf1"])
def test_the_export_runs_as_tf_serving_loads_it(exported, runner):
    from serving import fidelity

    _, path, loaded = exported
    run = {"c_api": fidelity.run_signature_c_api, "tf1": fidelity.run_signature_tf1}
    requests = {
        "serving_default": {"token_ids": random_token_ids(2, 6)},
        "next_token": {"token_ids": random_token_ids(2, 6)},
        "route": {"token_ids": random_token_ids(2, 6)},
        "generate": {
            "prompt": np.array([b"The king", b"A fool"], object),
            "max_new_tokens": np.array([3, 2], np.int32),
            "temperature": np.array([0.0, 0.5], np.float32),
            "top_k": np.array([0, 5], np.int32),
            "top_p": np.array([1.0, 0.9], np.float32),
            "seed": np.array([0, 1], np.int32),
        },
    }
    for signature, inputs in requests.items():
        expected = loaded.signatures[signature](
            **{k: tf.constant(v) for k, v in inputs.items()}
        )
        actual = run[runner](path, signature, inputs)
        assert sorted(actual) == sorted(expected)
        for key, value in expected.items():
            if value.dtype == tf.string:
                np.testing.assert_array_equal(actual[key], value.numpy())
            else:
                np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-5)
    with pytest.raises(fidelity.ServingError) as error:
        run[runner](
            path, "serving_default", {"token_ids": np.array([[5, 999]], np.int32)}
        )
    assert error.value.code == "INVALID_ARGUMENT"


def test_the_export_uses_only_servable_ops_and_signatures(exported):
    from serving import fidelity

    _, path, _ = exported
    assert fidelity.disallowed_ops(path) == set()
    assert fidelity.signature_lint(path) == []


def test_export_command_line(tokenizer, tmp_path):
    from serving import export as export_cli

    model = tiny_model(tokenizer)
    model.save(tmp_path / "model.keras")
    vocabulary = tokenizer.save_vocabulary(str(tmp_path / "vocab.txt"))
    flags = ["--model", str(tmp_path / "model.keras"), "--vocabulary", vocabulary]
    path = export_cli.main([*flags, "--base-dir", str(tmp_path / "exports")])
    assert path.endswith(os.path.join("switch", "1"))
    loaded = tf.saved_model.load(path)
    ids = tf.constant(random_token_ids(1, 4))
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](token_ids=ids)["logits"],
        serving_model(model)(np.pad(ids.numpy(), [[0, 0], [0, LENGTH - 4]]))[:, :4],
        rtol=1e-5,
        atol=1e-5,
    )
    other = text.WordPieceTokenizer(text.build_vocabulary(["a b c"], vocab_size=20))
    wrong = other.save_vocabulary(str(tmp_path / "other.txt"))
    with pytest.raises(SystemExit, match="vocabulary"):
        export_cli.main(
            ["--model", flags[1], "--vocabulary", wrong, "--base-dir", str(tmp_path)]
        )
