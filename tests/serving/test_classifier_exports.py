"""Classifier exports (`tf_switch.classifier_export`) served end to end: the
SavedModels of a SwitchViT, its dense twin and a SwitchEncoder behind the
local REST and gRPC servers (`:predict`, `:classify`, `route`), and checked
the way TF Serving loads them (C API, TF1 loader, op allow-list, lint)."""

import grpc  # noqa: F401  (the gRPC server's dependency, imported first)
import numpy as np
import pytest
import tensorflow as tf

from serving import fidelity, flags
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.grpc_server import make_grpc_server
from tests.serving.classify_models import image_examples
from tests.serving.rest import request
from tests.serving.rest_server import start_server, stop_server
from tf_switch import text
from tf_switch.classifier_export import ImageInput, TextInput, export_classifier
from tf_switch.models import SwitchEncoder, SwitchViT, get_preset

SMALL = {"hidden_dim": 16, "intermediate_dim": 32, "num_layers": 2}
DIGITS = tuple("0123456789")
GENRES = ("comedy", "tragedy")


def _images(count=3):
    return np.random.default_rng(0).random((count, 28, 28, 1), np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("classifiers")
    vit = SwitchViT(get_preset("vit-tiny", **SMALL), num_classes=10)
    dense = SwitchViT(get_preset("vit-tiny", **SMALL).dense_twin(), num_classes=10)
    tokenizer = text.WordPieceTokenizer(
        text.build_vocabulary(["the owl sleeps and the moon wakes\n" * 30], 60)
    )
    config = get_preset(
        "tiny", vocab_size=tokenizer.vocab_size, sequence_length=8, **SMALL
    )
    encoder = SwitchEncoder(config, num_classes=2)
    paths = {
        "digits": export_classifier(vit, ImageInput(), DIGITS, base, "digits"),
        "dense": export_classifier(dense, ImageInput(), DIGITS, base, "dense"),
        "genre": export_classifier(
            encoder, TextInput(tokenizer), GENRES, base, "genre"
        ),
    }
    models_config = base / "models.config"
    models_config.write_text(
        "model_config_list { "
        + " ".join(
            f'config {{ name: "{name}" base_path: "{base / name}" '
            'model_platform: "tensorflow" }'
            for name in paths
        )
        + " }"
    )
    return base, paths


@pytest.fixture(scope="module")
def servers(exports):
    base, _ = exports
    core = flags.make_core(model_config_file=str(base / "models.config"), poll_s=0)
    rest = start_server(core=core)
    grpc_server, port = make_grpc_server(core=core, port=0)
    yield rest, f"127.0.0.1:{port}"
    stop_server(rest)
    grpc_server.stop(None).wait(5)
    grpc_server.limiter.shutdown()
    core.stop()


def _rest(servers, name):
    host, port = servers[0].server_address[:2]
    return RestClient(f"http://{host}:{port}", model_name=name, timeout=30)


def _direct(path, signature, **inputs):
    function = tf.saved_model.load(path).signatures[signature]
    return {k: v.numpy() for k, v in function(**inputs).items()}


def test_signatures_pass_the_lint_and_the_op_allow_list(exports):
    _, paths = exports
    for path in paths.values():
        assert fidelity.signature_lint(path) == []
        assert fidelity.disallowed_ops(path) == set()
    assert "route" not in tf.saved_model.load(paths["dense"]).signatures


def test_tf1_and_c_api_runs_match_tf2(exports):
    _, paths = exports
    images = _images()
    examples = np.array(image_examples(images), dtype=object)
    expected = _direct(paths["digits"], "classify", inputs=tf.constant(examples))
    for run in (fidelity.run_signature_tf1, fidelity.run_signature_c_api):
        got = run(paths["digits"], "classify", {"inputs": examples})
        np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-6)
        assert got["classes"].tolist() == expected["classes"].tolist()
    got = fidelity.run_signature_tf1(
        paths["genre"], "serving_default", {"text": np.array([b"the owl"], object)}
    )
    want = _direct(paths["genre"], "serving_default", text=tf.constant(["the owl"]))
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_image_predict_and_classify_agree(exports, servers, protocol):
    _, paths = exports
    images = _images()
    direct = _direct(paths["digits"], "serving_default", pixels=tf.constant(images))
    if protocol == "rest":
        client = _rest(servers, "digits")
    else:
        client = GrpcClient(servers[1], model_name="digits", timeout=30)
    predicted = client.predict({"pixels": images})
    np.testing.assert_allclose(
        predicted["probabilities"], direct["probabilities"], atol=1e-5
    )
    assert predicted["label"].tolist() == direct["label"].tolist()
    classified = client.classify(
        [{"pixels": [float(v) for v in image.ravel()]} for image in images]
    )
    np.testing.assert_allclose(classified["scores"], direct["probabilities"], atol=1e-5)
    assert classified["classes"][0].tolist() == [d.encode() for d in DIGITS]
    route = client.predict({"pixels": images}, signature_name="route")
    assert route["expert"].shape == (3, 49, 1)
    assert (route["expert"] >= 0).all()  # served dropless: every patch routed


def test_text_classify_over_rest_in_tf_servings_format(exports, servers):
    status, body = request(
        servers[0],
        "POST",
        "/v1/models/genre:classify",
        body={"signature_name": "classify", "examples": [{"text": "the owl"}]},
    )
    assert status == 200
    (result,) = body["results"]
    assert [label for label, _ in result] == list(GENRES)
    assert sum(score for _, score in result) == pytest.approx(1.0, abs=1e-6)
    predicted = _rest(servers, "genre").predict({"text": np.array(["the owl"])})
    np.testing.assert_allclose(
        [score for _, score in result], predicted["probabilities"][0], atol=1e-6
    )


def test_bad_inputs_are_400s_that_say_what_was_expected(servers):
    client = _rest(servers, "genre")
    with pytest.raises(ServingClientError, match="nothing is cut"):
        client.predict({"text": np.array(["the owl " * 9])})
    digits = _rest(servers, "digits")
    with pytest.raises(ServingClientError, match=r"pixels must be in \[0, 1\]"):
        digits.predict({"pixels": _images(1) * 255})
    with pytest.raises(ServingClientError, match="pixels"):
        digits.classify([{"pixels": [0.5] * 10}])  # not 28*28 values


def test_export_command_line_exports_a_classifier_with_its_labels(tmp_path):
    from serving import export as export_cli

    model = SwitchViT(get_preset("vit-tiny", **SMALL), num_classes=3)
    model.save(tmp_path / "model.keras")
    flags = ["--model", str(tmp_path / "model.keras"), "--base-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="needs its class names"):
        export_cli.main([*flags, "--name", "first"])
    (tmp_path / "labels.txt").write_text("cat\ndog\nowl\n")
    path = export_cli.main([*flags, "--name", "vit"])
    outputs = _direct(path, "classify", inputs=tf.constant(image_examples(_images(1))))
    assert outputs["classes"].tolist() == [[b"cat", b"dog", b"owl"]]
