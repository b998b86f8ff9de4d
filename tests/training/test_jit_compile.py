import pytest

from training.config import TrainConfig
from training.train import build_model_config, check_jit_compile


def test_jit_compile_refuses_dropless_before_training():
    dropless = TrainConfig(jit_compile=True, capacity_factor="none")
    with pytest.raises(SystemExit, match="--capacity-factor 1.25"):
        check_jit_compile(dropless, build_model_config(dropless, vocab_size=100))
    static = TrainConfig(jit_compile=True)  # the tiny preset: 1.25 / 2.0
    check_jit_compile(static, build_model_config(static, vocab_size=100))
