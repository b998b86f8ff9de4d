"""Data-parallel training over logical CPUs equals one-device training."""

import json
import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.parametrize("group_size", [None, 32])
def test_mirrored_training_equals_single_device(group_size):
    # Same global batch of 8 sequences, dropout and jitter off; each replica
    # routes its own 4 sequences (per-sequence groups, or groups of 2).
    command = [sys.executable, "-m", "tests.distribute.mirrored_worker"]
    if group_size:
        command += ["--group-size", str(group_size)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=True
    )
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["replicas"] == 2
    assert len(runs["single"]) == len(runs["mirrored"]) == 4
    for single, mirrored in zip(runs["single"], runs["mirrored"], strict=True):
        assert single.keys() == mirrored.keys()
        assert "block_1_ffn_router/load_balance_loss" in single
        for key in single:
            if key.endswith("/max_load"):
                # The busiest expert's share is a max, taken on each replica's
                # half of the batch; Keras averages metrics over replicas, so
                # it is not the global max (every summed metric is exact).
                continue
            np.testing.assert_allclose(
                mirrored[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key
            )
    assert runs["max_weight_difference"] < 1e-4
