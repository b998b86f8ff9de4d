import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.training.synthetic import write_corpus
from tf_switch.export import serving_model
from tf_switch.options import SwitchOptions
from training.config import TrainConfig, parse_args
from training.train import build_model_config, train

TINY = {
    "epochs": 2,
    "steps_per_epoch": 6,
    "validation_steps": 2,
    "batch_size": 4,
    "sequence_length": 16,
    "vocab_size": 120,
    "warmup_steps": 2,
    "sample_tokens": 8,
    "prompt": "KING:",
}
TINY_FLAGS = [
    "--epochs",
    "2",
    "--steps-per-epoch",
    "6",
    "--validation-steps",
    "2",
    "--batch-size",
    "4",
    "--sequence-length",
    "16",
    "--vocab-size",
    "120",
    "--warmup-steps",
    "2",
    "--sample-tokens",
    "8",
    "--prompt",
    "KING:",
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _flags(corpus_dir, output, *extra):
    return ["--data", str(corpus_dir), "--output", str(output), *TINY_FLAGS, *extra]


def _config(corpus_dir, output, **changes):
    return TrainConfig(data=str(corpus_dir), output=str(output), **{**TINY, **changes})


def test_training_job_writes_every_artifact(corpus_dir, tmp_path, capsys):
    train(_config(corpus_dir, tmp_path))
    console = capsys.readouterr().out
    # The progress lines: loss, perplexity, two numbers per Switch layer.
    assert "perplexity" in console and "block_1_ffn_router/dropped_fraction" in console
    assert "expert_0_fraction" not in console
    for name in (
        "model.keras",
        "vocab.txt",
        "loss.png",
        "expert_load.png",
        "sample.txt",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    export = tmp_path / "serving" / "switch" / "1"
    assert (export / "assets" / "vocab.txt").exists()
    loaded = tf.saved_model.load(str(export))
    assert {"serving_default", "generate", "route"} <= set(loaded.signatures)
    ids = np.array([[2, 10, 11]], np.int32)
    model = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](token_ids=tf.constant(ids))["logits"],
        serving_model(model)(np.pad(ids, [[0, 0], [0, 13]]))[:, :3],
        rtol=1e-5,
        atol=1e-5,
    )
    # The demo's sample is the SavedModel's `generate` answer: one decoder.
    request = {
        "prompt": ["KING:"],
        "max_new_tokens": [8],
        "temperature": [0.8],
        "top_k": [40],
        "top_p": [1.0],
        "seed": [0],
    }
    generated = loaded.signatures["generate"](
        **{k: tf.constant(v) for k, v in request.items()}
    )
    sample = (tmp_path / "sample.txt").read_text()
    assert sample == generated["text"][0].numpy().decode() + "\n"
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert "val_perplexity" in rows[0]
    assert any(key.endswith("/dropped_fraction") for key in rows[0])
    load = json.loads((tmp_path / "expert_load.json").read_text())
    assert len(load) == 2 and all(len(v) == 8 for v in load[-1].values())


def test_dense_twin_and_config_file(corpus_dir, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"experts": 0, "epochs": 1}))
    flags = _flags(corpus_dir, tmp_path / "out", "--config", str(config))
    run = parse_args(flags)
    assert isinstance(run, TrainConfig)
    assert run.experts == 0 and run.epochs == 2  # flags override the file
    assert run == _config(corpus_dir, tmp_path / "out", experts=0)
    model = train(run)
    assert not any("router" in w.path for w in model.weights)
    export = tf.saved_model.load(str(tmp_path / "out" / "serving" / "switch" / "1"))
    assert "route" not in export.signatures  # a dense model has no routing


def test_unknown_config_keys_are_refused(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])


def test_validation_curve_every_k_steps_leaves_training_unchanged(corpus_dir, tmp_path):
    plain = train(_config(corpus_dir, tmp_path / "plain", epochs=1))
    curved = train(_config(corpus_dir, tmp_path / "curve", epochs=1, eval_every=4))
    for a, b in zip(plain.get_weights(), curved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with open(tmp_path / "curve" / "validation_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 4]
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])
    assert 0 < float(rows[1]["train_seconds"])
    assert not (tmp_path / "plain" / "validation_curve.csv").exists()


def test_flags_override_the_preset_only_when_given():
    preset = build_model_config(TrainConfig(), vocab_size=100).switch_options
    assert preset == SwitchOptions(group_size=1024)  # the tiny preset's
    given = parse_args(["--capacity-factor", "1.0", "--eval-capacity-factor", "none"])
    options = build_model_config(given, vocab_size=100).switch_options
    assert options == preset.replace(capacity_factor=1.0, eval_capacity_factor=None)
    dropless = parse_args(["--capacity-factor", "none"])
    assert build_model_config(dropless, 100).switch_options.capacity_factor is None
    with pytest.raises(SystemExit):
        parse_args(["--capacity-factor", "-1"])


def _run_job(flags, **kwargs):
    command = [sys.executable, "-m", "training.train", *flags]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )


@pytest.mark.slow
def test_kill_9_and_rerun_resumes_to_identical_weights(corpus_dir, tmp_path):
    extra = ("--epochs", "3", "--steps-per-epoch", "10")
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    reference = _run_job(_flags(corpus_dir, tmp_path / "a", *extra), env=environment)
    assert reference.wait(timeout=600) == 0

    interrupted = _flags(corpus_dir, tmp_path / "b", *extra)
    job = _run_job(interrupted, env=environment)
    metadata = tmp_path / "b" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 600
    while not metadata.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert json.loads(metadata.read_text())["epoch"] < 3
    assert _run_job(interrupted, env=environment).wait(timeout=600) == 0

    weights = [
        keras.saving.load_model(tmp_path / run / "model.keras").get_weights()
        for run in ("a", "b")
    ]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_tpu_code_path_runs_on_cpu(corpus_dir, tmp_path):
    # What a TPU run changes: bfloat16 compute, several steps per call and
    # XLA; the export must still be float32 and free of TPU ops.
    model = train(
        _config(
            corpus_dir,
            tmp_path,
            precision="mixed_bfloat16",
            steps_per_execution=3,
            jit_compile=True,
            epochs=1,
        )
    )
    assert model.compute_dtype == "bfloat16"
    assert model.steps_per_execution == 3 and model.jit_compile
    export = tmp_path / "serving" / "switch" / "1"
    loaded = tf.saved_model.load(str(export))
    signature = loaded.signatures["serving_default"]
    specs = [*signature.structured_input_signature[1].values()]
    specs += [*signature.structured_outputs.values()]
    assert tf.bfloat16 not in {spec.dtype for spec in specs}
    saved_model = saved_model_pb2.SavedModel.FromString(
        (export / "saved_model.pb").read_bytes()
    )
    meta_graph = saved_model.meta_graphs[0]
    nodes = [*meta_graph.graph_def.node]
    for function in meta_graph.graph_def.library.function:
        nodes += function.node_def
    assert not [node.op for node in nodes if "TPU" in node.op]


@pytest.mark.slow
def test_expert_parallel_job_matches_replicated_experts(corpus_dir, tmp_path):
    # Two logical CPUs; each holds 4 of the 8 experts per Switch layer.
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    mirrored = ("--strategy", "mirrored", "--cpu-devices", "2", "--epochs", "1")
    for run, extra in (("replicated", ()), ("sharded", ("--expert-parallel",))):
        flags = _flags(corpus_dir, tmp_path / run, *mirrored, *extra)
        job = subprocess.run(
            [sys.executable, "-m", "training.train", *flags],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert job.returncode == 0, job.stderr[-3000:]
    weights = [
        keras.saving.load_model(tmp_path / run / "model.keras").get_weights()
        for run in ("replicated", "sharded")
    ]
    assert any(w.shape == (8, 128, 256) for w in weights[1])  # saved whole
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert (
        tmp_path / "sharded" / "serving" / "switch" / "1" / "saved_model.pb"
    ).exists()
