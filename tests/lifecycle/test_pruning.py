import numpy as np
import pytest

from tests.lifecycle.tiny_models import max_difference, switch_model, token_ids
from tf_switch.lifecycle import expert_usage, kept_experts, prune_experts


def test_usage_counts_top_experts_and_mean_probabilities():
    model = switch_model()
    ids = [token_ids(seed=0), token_ids(seed=1)]
    usage = expert_usage(model, [(ids[0], ids[0]), ids[1]])  # pairs or ids
    assert sorted(usage) == ["block_1", "block_3"]
    for stats in usage.values():
        assert sum(stats["load"]) == pytest.approx(1.0)
        assert sum(stats["mass"]) == pytest.approx(1.0)
        # 96 tokens: each load is a whole number of them.
        np.testing.assert_allclose(np.array(stats["load"]) * 96 % 1, 0, atol=1e-9)


def test_most_used_experts_by_load_then_mass_or_by_mass():
    usage = {
        "block_1": {"load": [0.3, 0.0, 0.7, 0.0], "mass": [0.3, 0.1, 0.5, 0.1]},
        "block_3": {"load": [0.25, 0.25, 0.25, 0.25], "mass": [0.1, 0.4, 0.2, 0.3]},
    }
    assert kept_experts(usage, 2) == {"block_1": [0, 2], "block_3": [1, 3]}
    assert kept_experts(usage, 1, criterion="mass") == {"block_1": [2], "block_3": [1]}
    with pytest.raises(ValueError, match="criterion"):
        kept_experts(usage, 2, criterion="random")


def test_pruned_layer_keeps_its_experts_and_router_columns():
    model = switch_model()
    usage = expert_usage(model, [token_ids()])
    pruned, kept = prune_experts(model, 2, usage)
    assert pruned.config.num_experts == 2
    for name, index in kept.items():
        old, new = model.get_layer(name).ffn, pruned.get_layer(name).ffn
        np.testing.assert_array_equal(
            new.router.kernel.numpy(), old.router.kernel.numpy()[:, index]
        )
        np.testing.assert_array_equal(
            new.experts.wo.numpy(), old.experts.wo.numpy()[index]
        )
    assert pruned.count_params() < model.count_params()
    # Capacity follows the new N: ceil(2.0 * 24 / 2) = 24 slots per expert.
    assert pruned.get_layer("block_1").ffn.router.expert_capacity(24, False) == 24


def test_keeping_every_expert_changes_nothing():
    model = switch_model()
    usage = expert_usage(model, [token_ids()])
    pruned, kept = prune_experts(model, 4, usage)
    assert kept["block_1"] == [0, 1, 2, 3]
    ids = token_ids(seed=2)
    np.testing.assert_array_equal(np.asarray(pruned(ids)), np.asarray(model(ids)))


def test_experts_that_no_token_chose_go_without_changing_outputs():
    # Router columns 1 and 3 copy columns 0 and 2: their logits tie, and the
    # tie goes to the lower index, so no token's top expert is 1 or 3.
    # Dropless with normalized top-1 gates (always 1), removing them leaves
    # every output as it was.
    model = switch_model(
        num_layers=2,
        switch_options={
            "group_size": 24,
            "capacity_factor": None,
            "eval_capacity_factor": None,
            "normalize_gates": True,
        },
    )
    kernel = model.get_layer("block_1").ffn.router.kernel
    columns = kernel.numpy()
    kernel.assign(columns[:, [0, 0, 2, 2]])
    ids = token_ids()
    usage = expert_usage(model, [ids])
    assert usage["block_1"]["load"][1] == usage["block_1"]["load"][3] == 0.0
    pruned, kept = prune_experts(model, 2, usage)
    assert kept == {"block_1": [0, 2]}
    assert max_difference(pruned(ids), model(ids)) < 1e-5


def test_keep_one_is_the_dense_twin_with_the_kept_expert():
    model = switch_model(
        switch_options={"group_size": 24, "eval_capacity_factor": None}
    )
    usage = expert_usage(model, [token_ids()])
    pruned, kept = prune_experts(model, 1, usage)
    assert pruned.config.num_experts is None
    block = pruned.get_layer("block_1")
    expert = kept["block_1"][0]
    np.testing.assert_array_equal(
        block.ffn.wi[0].numpy()[0],
        model.get_layer("block_1").ffn.experts.wi[0].numpy()[expert],
    )


def test_errors():
    model = switch_model()
    usage = expert_usage(model, [token_ids()])
    with pytest.raises(ValueError, match=r"\[1, num_experts=4\]"):
        prune_experts(model, 5, usage)
    with pytest.raises(ValueError, match="Measure it"):
        prune_experts(model, 2, {"block_1": usage["block_1"]})
    shared = switch_model(switch_options={"group_size": 24, "shared_expert_dim": 8})
    with pytest.raises(ValueError, match="shared expert"):
        prune_experts(shared, 1, expert_usage(shared, [token_ids()]))
