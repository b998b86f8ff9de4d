import keras
import numpy as np
import pytest

from tests.layers.layer_checks import check_save_and_reload
from tf_switch.models import SwitchViT, get_preset, parameter_and_flop_counts
from tf_switch.models.decoding import inference_model


def _config(**changes):
    return get_preset(
        "vit-tiny",
        **{"hidden_dim": 16, "intermediate_dim": 32, "num_layers": 2, **changes},
    )


def _images(batch=3, seed=0):
    return np.random.default_rng(seed).random((batch, 28, 28, 1), np.float32)


def test_logits_shape_and_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = SwitchViT(_config(), num_classes=5)
    logits = model(_images())
    assert logits.shape == (3, 5)
    assert logits.dtype == "float32"


def test_patches_must_tile_the_image_and_match_the_config():
    with pytest.raises(ValueError, match="multiple of patch_size=5"):
        SwitchViT(_config(), num_classes=2, patch_size=5)
    with pytest.raises(ValueError, match="number of 7x7 patches .* 16"):
        SwitchViT(_config(), num_classes=2, patch_size=7)


def test_other_image_shapes():
    config = _config(sequence_length=4 * 8)
    model = SwitchViT(config, num_classes=2, image_size=(16, 32), channels=3)
    assert model(np.zeros((2, 16, 32, 3), np.float32)).shape == (2, 2)


def test_save_and_reload(tmp_path):
    model = SwitchViT(_config(), num_classes=4)
    check_save_and_reload(model, _images(), tmp_path)


def test_dense_twin_has_the_stacks_flops():
    config = _config()
    sparse = parameter_and_flop_counts(config)["flops_per_token"]
    dense = parameter_and_flop_counts(config.dense_twin())["flops_per_token"]
    router = 2 * config.hidden_dim * config.num_experts  # one sparse block
    assert sparse - dense == router


def test_batch_prioritized_routing_keeps_the_most_confident_patches():
    """V-MoE: with capacity below one, each expert of each image keeps the
    patches its router is surest of; sequence order keeps the first ones."""
    model = SwitchViT(_config(), num_classes=2)
    images = _images(batch=2)
    for prioritized in (True, False):
        copy = inference_model(
            model, eval_capacity_factor=0.25, batch_prioritized_routing=prioritized
        )
        hidden = keras.Model(copy.input, copy.get_layer("block_1").input)(images)
        _, stats = copy.get_layer("block_1")(hidden, return_router_stats=True)
        kept = np.asarray(stats["token_expert"]) >= 0
        probs = np.asarray(stats["token_router_probs"])
        top, confidence = probs.argmax(-1), probs.max(-1)
        assert 0 < kept.sum(axis=1).max() < 49
        compared = 0
        for row in range(2):
            for expert in range(probs.shape[-1]):
                chose = top[row] == expert
                kept_here, dropped_here = chose & kept[row], chose & ~kept[row]
                if not (kept_here.any() and dropped_here.any()):
                    continue
                compared += 1
                if prioritized:
                    assert (
                        confidence[row][kept_here].min()
                        >= confidence[row][dropped_here].max()
                    )
                else:
                    positions = np.arange(49)
                    assert positions[kept_here].max() < positions[dropped_here].min()
        assert compared > 0
