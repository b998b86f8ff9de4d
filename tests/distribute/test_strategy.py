"""Strategy choice: names, errors, the chief."""

import json

import pytest
import tensorflow as tf

from tf_switch.distribute import (
    StrategyUnavailableError,
    is_chief,
    resolve_strategy,
    split_cpu,
)
from tf_switch.distribute import strategy as strategy_lib


def test_cpu_and_auto_without_accelerators_are_the_default_strategy():
    for name in ("cpu", "auto"):
        strategy = resolve_strategy(name)
        assert strategy is tf.distribute.get_strategy()
        assert is_chief(strategy)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="Expected one of"):
        resolve_strategy("gpu")


def test_requested_tpu_that_is_absent_is_an_error(monkeypatch):
    def no_tpu():
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster")

    monkeypatch.setattr(strategy_lib, "_tpu_strategy", no_tpu)
    with pytest.raises(StrategyUnavailableError, match="TPU was requested"):
        resolve_strategy("tpu")


def test_auto_falls_back_when_a_hinted_tpu_does_not_answer(monkeypatch, caplog):
    def no_tpu():
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster")

    monkeypatch.setenv("TPU_NAME", "grpc://10.0.0.2:8470")
    monkeypatch.setattr(strategy_lib, "_tpu_strategy", no_tpu)
    with caplog.at_level("INFO", logger=strategy_lib.__name__):
        strategy = resolve_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert "No usable TPU" in caplog.text
    assert "one device" in caplog.text


def test_tf_config_cluster_counts_tasks(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"], "chief": ["127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster}))
    assert strategy_lib._cluster_size() == 3
    monkeypatch.delenv("TF_CONFIG")
    assert strategy_lib._cluster_size() == 0


def test_split_cpu_after_start_says_what_to_do():
    tf.constant(0)  # TensorFlow has started with one CPU device
    with pytest.raises(RuntimeError, match="before any TensorFlow op"):
        split_cpu(3)
