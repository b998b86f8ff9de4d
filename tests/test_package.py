"""A saved model loads in a fresh process that imports only tf_switch."""

import subprocess
import sys

import keras

from tf_switch.metrics import Perplexity
from tf_switch.models import SwitchLanguageModel, get_preset
from tf_switch.schedules import WarmupSchedule


def test_keras_file_loads_after_importing_only_tf_switch(tmp_path):
    config = get_preset("tiny", num_layers=2, vocab_size=40, sequence_length=8)
    model = SwitchLanguageModel(config)
    model.compile(
        keras.optimizers.Adam(WarmupSchedule(1e-3, 2, 10)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[Perplexity()],
    )
    path = tmp_path / "model.keras"
    model.save(path)
    code = (
        "import keras, tf_switch; "
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True); "
        "print(type(m).__name__, m.count_params())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"SwitchLanguageModel {model.count_params()}" in result.stdout
