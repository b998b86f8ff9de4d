"""`--init-from` and `--distill-from`: the job's lifecycle flags, without
training (the end-to-end runs are in `test_lifecycle_cli.py`)."""

import keras
import numpy as np
import pytest

from tests.lifecycle.tiny_models import max_difference, small_config, token_ids
from tf_switch.lifecycle import DistillationModel
from tf_switch.models import SwitchLanguageModel
from training import lifecycle
from training.config import TrainConfig, parse_args
from training.train import build_model_config, compile_model


@pytest.fixture
def dense_run(tmp_path):
    """A finished dense run's folder: model.keras and vocab.txt."""
    folder = tmp_path / "dense"
    folder.mkdir()
    keras.utils.set_random_seed(0)
    SwitchLanguageModel(small_config().dense_twin()).save(folder / "model.keras")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[BOS]\nking\n")
    return folder


def _config(tmp_path, **changes):
    return TrainConfig(output=str(tmp_path / "out"), **changes)


def _model_config(config):
    # The preset's routing with the run's overrides, at the test shape.
    preset = small_config(num_experts=config.experts or None)
    if preset.num_experts is None:
        return preset.dense_twin()
    overrides = config.switch_overrides()
    if config.init_from:
        overrides = {**lifecycle.upcycling_overrides(config), **overrides}
    return preset.replace(switch_options=preset.switch_options.replace(**overrides))


def test_flags_reach_the_config():
    config = parse_args(
        [
            "--init-from",
            "runs/dense/model.keras",
            "--top-k",
            "2",
            "--shared-expert-dim",
            "64",
            "--shared-expert-gate",
            "--distill-from",
            "runs/switch/model.keras",
            "--distill-weight",
            "0.5",
        ]
    )
    assert config.init_from == "runs/dense/model.keras"
    assert config.distill_from == "runs/switch/model.keras"
    assert config.distill_weight == 0.5
    assert config.switch_overrides() == {
        "top_k": 2,
        "shared_expert_dim": 64,
        "shared_expert_gate": True,
    }


def test_init_from_defaults_to_the_exact_upcycling_options(tmp_path):
    options = build_model_config(
        _config(tmp_path, init_from="d/model.keras", experts=8), 2000
    ).switch_options
    assert (options.top_k, options.normalize_gates) == (2, True)
    assert (options.capacity_factor, options.eval_capacity_factor) == (2.5, None)
    # Flags still win; a plain run keeps the preset's routing.
    given = build_model_config(
        _config(tmp_path, init_from="d/model.keras", experts=8, capacity_factor=3.0),
        2000,
    ).switch_options
    assert given.capacity_factor == 3.0
    plain = build_model_config(_config(tmp_path, experts=8), 2000).switch_options
    assert (plain.top_k, plain.normalize_gates) == (1, False)


def test_init_from_upcycles_with_the_dense_outputs(dense_run, tmp_path):
    config = _config(tmp_path, init_from=str(dense_run / "model.keras"), experts=4)
    model = lifecycle.initial_model(_model_config(config), config)
    dense = keras.saving.load_model(dense_run / "model.keras")
    assert model.config.num_experts == 4
    ids = token_ids()
    assert max_difference(model(ids), dense(ids)) < 1e-5
    # --experts 0: the dense model itself, to continue.
    config = config.replace(experts=0)
    copy = lifecycle.initial_model(_model_config(config), config)
    np.testing.assert_array_equal(np.asarray(copy(ids)), np.asarray(dense(ids)))


def test_init_from_refuses_another_shape(dense_run, tmp_path):
    config = _config(tmp_path, init_from=str(dense_run / "model.keras"), experts=4)
    other = _model_config(config).replace(sequence_length=24)
    with pytest.raises(SystemExit, match="sequence_length: 12 there, 24 here"):
        lifecycle.initial_model(other, config)


def test_the_source_runs_vocabulary_is_reused(dense_run, tmp_path):
    config = _config(tmp_path, init_from=str(dense_run / "model.keras"))
    (tmp_path / "out").mkdir()
    lifecycle.reuse_vocabulary(config)
    assert (tmp_path / "out" / "vocab.txt").read_text().endswith("king\n")
    (dense_run / "vocab.txt").unlink()
    with pytest.raises(SystemExit, match="no vocab.txt beside it"):
        lifecycle.reuse_vocabulary(config)
    missing = _config(tmp_path, distill_from=str(tmp_path / "nothing.keras"))
    with pytest.raises(SystemExit, match="no such model file"):
        lifecycle.reuse_vocabulary(missing)


def test_distill_from_wraps_the_student_and_compiles(tmp_path):
    folder = tmp_path / "switch"
    folder.mkdir()
    SwitchLanguageModel(small_config()).save(folder / "model.keras")
    config = _config(
        tmp_path, experts=0, distill_from=str(folder / "model.keras"), epochs=1
    )
    model = compile_model(_model_config(config), 10, config)
    assert isinstance(model, DistillationModel)
    assert model.distill_weight == 0.75
    assert lifecycle.trained_model(model) is model.student
    ids = token_ids()
    loss = model.evaluate(ids, np.roll(ids, -1, axis=1), verbose=0)
    assert np.isfinite(loss[0] if isinstance(loss, list) else loss)
