"""Expert parallelism: sharded experts equal replicated experts.

Checks that need D logical CPUs run in `expert_parallel_worker`, one fresh
subprocess per check with a hard timeout (collectives also carry
`timeout_seconds`), so a deadlock fails the test instead of hanging CI.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.layers.layer_checks import check_config_round_trip, check_save_and_reload
from tf_switch import ExpertFFN, SwitchBlock, SwitchFFN
from tf_switch.distribute.expert_parallel import ExpertParallelFFN

HARD_TIMEOUT_SECONDS = 180
# Float32 sums in another order: outputs and gradients agree to ~1e-7.
ATOL = 1e-5


def run_worker(*args):
    """Runs one worker check in a subprocess; returns its JSON result."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.distribute.expert_parallel_worker", *args],
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def check_layer(result, num_devices):
    local_experts = 8 // num_devices
    assert result["shapes"]["ffn/experts/wo"] == [local_experts, 12, 8]
    assert result["shapes"]["ffn/experts/bi"] == [local_experts, 1, 12]
    assert result["shapes"]["ffn/ffn_router/kernel"] == [8, 8]  # data-parallel
    assert result["output_scale"] > 1e-3  # the comparison is not of zeros
    assert result["output_error"] < ATOL
    for path, error in result["grad_errors"].items():
        assert error < ATOL, path
        assert result["grad_scales"][path] > 1e-4, path  # not a zero gradient
    assert result["cross_replica_error"] < ATOL
    assert result["logical_error"] == 0.0


def check_fit(result, num_devices):
    losses = result["losses"]
    assert len(losses["parallel"]) == 5
    np.testing.assert_allclose(losses["parallel"], losses["replicated"], atol=ATOL)
    assert losses["parallel"][-1] < losses["parallel"][0]
    assert result["weight_error"] < ATOL
    assert result["slot_error"] < ATOL
    replicated, parallel = result["bytes"]["replicated"], result["bytes"]["parallel"]
    for kind in ("params", "slots"):
        assert len(parallel[kind]) == num_devices
        for full, shard in zip(replicated[kind], parallel[kind], strict=True):
            assert shard * num_devices == full, kind


@pytest.fixture(scope="module")
def two_devices():
    """One process on 2 logical CPUs for the quick checks; `errors` last,
    since its timed-out collective aborts the process's collectives."""
    return run_worker(
        "layer,layer_einsum,layer_shared,bfloat16,serving_copy,errors", "2"
    )


def test_layer_matches_replicated_experts_on_2_devices(two_devices):
    check_layer(two_devices, 2)


def test_einsum_dispatch_matches_replicated_experts(two_devices):
    check_layer(two_devices["einsum"], 2)


def test_shared_expert_stays_data_parallel(two_devices):
    # Routed experts sharded, the shared expert whole on every replica, its
    # gradient summed over replicas like any data-parallel weight.
    shared = two_devices["shared"]
    check_layer(shared, 2)
    assert shared["shapes"]["ffn/shared_expert/ffn/wo"] == [1, 6, 8]
    assert shared["shapes"]["ffn/shared_expert/gate_kernel"] == [8, 1]
    assert "ffn/shared_expert/ffn/wi_0" in shared["grad_errors"]  # gated-gelu


def test_mixed_bfloat16_matches_replicated_experts(two_devices):
    assert two_devices["bfloat16_scale"] > 1e-3
    assert two_devices["bfloat16_error"] < 0.02 * two_devices["bfloat16_scale"]


def test_serving_copy_takes_logical_weights(two_devices):
    # A replicated copy, built outside the strategy, of an expert-parallel
    # language model takes its full weights and predicts what it predicts.
    assert two_devices["expert_shapes"] == [[2, 24, 16]]
    assert two_devices["get_weights_error"] == "ValueError"  # shard arrays
    assert two_devices["predict_error"] < ATOL


def test_errors_are_clear_and_collectives_time_out(two_devices):
    error = two_devices["divisibility_error"]
    assert "multiple of the number of replicas (2)" in error
    assert "Received: num_experts=3" in error
    assert "MirroredStrategy" in two_devices["strategy_error"]
    assert two_devices["timeout_error"] == "DeadlineExceededError"


def test_fit_with_adam_matches_and_saves_full_weights(tmp_path):
    result = run_worker("fit", "2", str(tmp_path))
    check_fit(result, 2)
    # An expert-parallel model's weights and Adam state load into a
    # replicated model, and its `.keras` file reloads outside a strategy.
    assert result["plain_load_error"] == 0.0
    assert result["plain_load_slot_error"] == 0.0
    assert result["keras_reload_shapes"][3] == [8, 12, 8]
    assert result["keras_reload_error"] < ATOL
    # A replicated run's BackupAndRestore backup restores into an
    # expert-parallel model, which then trains on like the replicated one.
    resumed = result["resumed_losses"]
    assert len(resumed["restored"]) == 2
    np.testing.assert_allclose(resumed["restored"], resumed["replicated"], atol=ATOL)
    assert result["resumed_weight_error"] < ATOL


@pytest.mark.slow
def test_layer_and_fit_match_replicated_experts_on_4_devices():
    result = run_worker("layer,fit", "4")
    check_layer(result, 4)
    check_fit(result, 4)


def _ffn(expert_parallel):
    return SwitchFFN(
        num_experts=4,
        intermediate_dim=8,
        use_bias=True,
        capacity_factor=1.0,
        expert_parallel=expert_parallel,
    )


def test_without_a_strategy_the_option_is_the_plain_layer(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    plain, parallel = _ffn(False), _ffn(True)
    for layer in (plain, parallel):
        layer.build(x.shape)
    parallel.set_weights(plain.get_weights())
    np.testing.assert_array_equal(parallel(x), plain(x))
    assert parallel.experts.exchange is None
    assert parallel.experts.wo.shape == (4, 8, 4)
    inputs = keras.Input((6, 4), batch_size=2)
    model = keras.Model(inputs, _ffn(True)(inputs))
    reloaded = check_save_and_reload(model, x, tmp_path)
    assert isinstance(reloaded.layers[1].experts, ExpertParallelFFN)


def test_config_round_trips_the_option():
    check_config_round_trip(ExpertParallelFFN(4, 8))
    layer = _ffn(True)
    check_config_round_trip(layer)
    assert layer.get_config()["expert_parallel"] is True
    assert _ffn(False).get_config()["expert_parallel"] is False
    block = SwitchBlock(
        num_heads=2,
        intermediate_dim=8,
        num_experts=4,
        switch_options={"expert_parallel": True},
    )
    check_config_round_trip(block)
    assert isinstance(block.ffn.experts, ExpertParallelFFN)
    assert type(_ffn(False).experts) is ExpertFFN


def test_invalid_option_is_refused():
    with pytest.raises(ValueError, match="Received: expert_parallel='yes'"):
        SwitchFFN(4, 8, expert_parallel="yes")


def test_expert_ffn_saved_before_the_split_still_loads():
    config = ExpertFFN(4, 8).get_config()
    assert (
        type(ExpertFFN.from_config({**config, "expert_parallel": False})) is ExpertFFN
    )
    with pytest.raises(ValueError, match="ExpertParallelFFN"):
        ExpertFFN.from_config({**config, "expert_parallel": True})
