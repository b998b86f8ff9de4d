"""The classification job end to end on tiny made-up tasks (no download)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.serving.classify_models import image_examples
from tf_switch.models import PRESETS, get_preset
from tf_switch.models.decoding import inference_model
from training.classify import main, train_classifier
from training.config import ClassifyConfig
from training.digits import LabelledSplit


@pytest.fixture
def small_presets(monkeypatch):
    small = {"hidden_dim": 16, "intermediate_dim": 32, "num_layers": 2}
    monkeypatch.setitem(PRESETS, "vit-test", get_preset("vit-tiny", **small))
    monkeypatch.setitem(
        PRESETS, "encoder-test", get_preset("tiny", num_experts=4, **small)
    )


def _images(count, rng):
    """Class 0: a bright top half; class 1: a bright bottom half."""
    labels = np.arange(count) % 2
    images = rng.random((count, 28, 28, 1), np.float32) * 0.2
    for image, label in zip(images, labels, strict=True):
        image[14 * label : 14 * label + 14] += 0.8
    return images, labels.astype(np.int32)


def _passages(count, rng):
    words = [["owl", "night", "sleeps"], ["moon", "sun", "wakes"]]
    labels = np.arange(count) % 2
    texts = [" ".join(rng.choice(words[label], size=5)) for label in labels]
    return np.array(texts, dtype=object), labels.astype(np.int32)


def _split(make):
    rng = np.random.default_rng(0)
    return LabelledSplit(
        make(64, rng), make(16, rng), make(16, rng), ("first", "second"), "made up"
    )


def _config(tmp_path, **changes):
    settings = {
        "epochs": 2,
        "batch_size": 16,
        "warmup_steps": 2,
        "learning_rate": 3e-3,
        "output": str(tmp_path / "run"),
    }
    return ClassifyConfig(**{**settings, **changes})


def test_digits_job_trains_saves_and_exports(tmp_path, small_presets):
    split = _split(_images)
    config = _config(tmp_path, task="digits", preset="vit-test", epochs=1)
    model, results = train_classifier(config, data=split)
    output = config.output_dir
    with open(os.path.join(output, "results.json")) as f:
        assert json.load(f) == results
    assert results["experts"] == 8 and results["test_examples"] == 16
    assert 0.0 <= results["test_accuracy"] <= 1.0
    for name in ("model.keras", "history.csv", "loss.png", "expert_load.png"):
        assert os.path.exists(os.path.join(output, name)), name

    reloaded = keras.saving.load_model(os.path.join(output, "model.keras"))
    images = split.test[0]
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )

    served = tf.saved_model.load(results["export"])
    expected = tf.nn.softmax(inference_model(model)(images)).numpy()
    outputs = served.signatures["serving_default"](pixels=tf.constant(images))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert set(outputs["label"].numpy()) <= {b"first", b"second"}
    examples = image_examples(images)
    classified = served.signatures["classify"](inputs=tf.constant(examples))
    np.testing.assert_allclose(classified["scores"], expected, atol=1e-5)
    assert classified["classes"].numpy()[0].tolist() == [b"first", b"second"]
    route = served.signatures["route"](pixels=tf.constant(images))
    assert route["expert"].shape == (16, 49, 1)  # one Switch layer of two


def test_genre_job_on_text(tmp_path, small_presets, caplog):
    split = _split(_passages)
    texts, labels = split.test
    split = LabelledSplit(
        split.train,
        split.validation,
        (np.append(texts, "owl " * 100), np.append(labels, 0)),
        split.labels,
        split.source,
    )
    config = _config(
        tmp_path,
        task="genre",
        preset="encoder-test",
        sequence_length=16,
        vocab_size=40,
    )
    with caplog.at_level("INFO", logger="training"):
        _, results = train_classifier(config, data=split)
    assert "test: 1 of 17 passages are longer than 16 word pieces" in caplog.text
    assert results["test_examples"] == 16
    assert os.path.exists(os.path.join(config.output_dir, "vocab.txt"))
    served = tf.saved_model.load(results["export"])
    outputs = served.signatures["serving_default"](text=tf.constant(["owl sleeps"]))
    assert outputs["probabilities"].shape == (1, 2)
    route = served.signatures["route"](text=tf.constant(["owl sleeps"]))
    padding = route["token_ids"].numpy()[0] == 0
    expert = route["expert"].numpy()[0, :, 0]
    assert padding.any() and (expert[padding] == -1).all()  # padding: no expert
    assert (expert[~padding] >= 0).all()  # dropless serving
    with pytest.raises(tf.errors.InvalidArgumentError, match="nothing is cut"):
        served.signatures["serving_default"](text=tf.constant(["owl " * 17]))


def test_flags_build_the_config(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"task": "genre", "epochs": 3}))
    from training.config import build_parser, parse_args

    parser = build_parser(ClassifyConfig)
    config = parse_args(
        ["--config", str(config_file), "--experts", "0", "--capacity-factor", "none"],
        parser,
        ClassifyConfig,
    )
    assert (config.task, config.epochs, config.experts) == ("genre", 3, 0)
    assert config.switch_overrides() == {"capacity_factor": None}
    assert config.output_dir == "runs/genre"
    with pytest.raises(SystemExit):
        main(["--task", "sounds"])
