import pathlib

import keras
import numpy as np
import pytest

from tests.layers.layer_checks import check_save_and_reload
from tf_switch.models import (
    PRESETS,
    SwitchEncoder,
    SwitchLanguageModel,
    get_preset,
    parameter_and_flop_counts,
)


def _small(**changes):
    fields = {
        "vocab_size": 50,
        "sequence_length": 12,
        "hidden_dim": 16,
        "intermediate_dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "num_experts": 4,
        "dropout": 0.0,
        "switch_options": {"group_size": 24},
    }
    return get_preset("tiny", **{**fields, **changes})


def _tokens(shape=(4, 12), seed=0, low=1):
    return np.random.default_rng(seed).integers(low, 50, size=shape).astype("int32")


@pytest.mark.parametrize(
    "config",
    [
        _small(),
        _small().dense_twin(),
        _small(tie_embeddings=False, activation="gated-gelu", sparse_every=1),
        _small(
            switch_options={
                "group_size": 24,
                "shared_expert_dim": 8,
                "shared_expert_gate": True,
            }
        ),
    ],
)
def test_parameter_count_matches_the_built_model(config):
    model = SwitchLanguageModel(config)
    assert model.count_params() == parameter_and_flop_counts(config)["parameters"]


def test_switch_blocks_every_other_layer_and_dense_twin_flops():
    config = _small(num_layers=4)
    assert [config.is_sparse(i) for i in range(4)] == [False, True, False, True]
    sparse = parameter_and_flop_counts(config)
    dense = parameter_and_flop_counts(config.dense_twin())
    assert sparse["expert_parameters"] == 2 * 4 * 2 * 16 * 32
    router_flops = 2 * 2 * 16 * 4  # two sparse layers, 2 * d * N each
    assert sparse["flops_per_token"] == dense["flops_per_token"] + router_flops


def test_presets_have_the_paper_shapes():
    base = PRESETS["switch-base-128"]
    assert (
        base.hidden_dim,
        base.intermediate_dim,
        base.num_layers,
        base.num_heads,
    ) == (
        768,
        3072,
        12,
        12,
    )
    assert [PRESETS[f"switch-base-{n}"].num_experts for n in (8, 32, 128)] == [
        8,
        32,
        128,
    ]
    with pytest.raises(ValueError, match="tiny"):
        get_preset("huge")


def test_language_model_is_causal():
    # One routing group per sequence: with groups spanning sequences, a
    # token's capacity also depends on the (complete) earlier sequences.
    model = SwitchLanguageModel(_small(switch_options={}))
    tokens = _tokens()
    changed = tokens.copy()
    changed[:, 8:] = _tokens((4, 4), seed=1)
    logits = np.asarray(model(tokens))
    changed_logits = np.asarray(model(changed))
    np.testing.assert_allclose(
        logits[:, :8], changed_logits[:, :8], rtol=1e-5, atol=1e-5
    )


def test_language_model_reloads_and_trains(tmp_path):
    model = SwitchLanguageModel(_small())
    tokens = _tokens((8, 13))
    check_save_and_reload(model, tokens[:, :-1], tmp_path)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(tokens[:, :-1], tokens[:, 1:], epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "block_1_ffn_router/dropped_fraction" in history.history


def test_mixed_bfloat16_logits_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = SwitchLanguageModel(_small())
    assert model(_tokens()).dtype == "float32"


def test_encoder_classifies_and_reloads(tmp_path):
    model = SwitchEncoder(_small(switch_options={}), num_classes=3)
    tokens = _tokens()
    tokens[:, 9:] = 0  # padding
    assert model(tokens).shape == (4, 3)
    longer = tokens.copy()
    longer[:, 9] = 7  # one more valid token changes the pooled output
    assert not np.allclose(model(tokens), model(longer))
    check_save_and_reload(model, tokens, tmp_path)


def test_a_model_saved_by_the_first_wave_loads_with_identical_outputs():
    # tests/data/wave1_tiny_lm.keras was saved by commit ccfc948, before the
    # layers moved to typed SwitchOptions and expert parallelism moved out of
    # ExpertFFN (top-2, groups of 16, capacity 1.0/1.5, 4 experts).
    data = pathlib.Path(__file__).resolve().parents[1] / "data"
    model = keras.saving.load_model(data / "wave1_tiny_lm.keras", safe_mode=True)
    saved = np.load(data / "wave1_tiny_lm_io.npz")
    options = model.config.switch_options
    assert (options.top_k, options.group_size, options.eval_capacity_factor) == (
        2,
        16,
        1.5,
    )
    np.testing.assert_array_equal(
        model(saved["token_ids"], training=False), saved["logits"]
    )
