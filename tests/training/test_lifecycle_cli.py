"""The lifecycle tools end to end on the outputs of `python -m training.train`
(slow: four tiny training runs and a pruning)."""

import json

import keras
import pytest

from tests.training.synthetic import write_corpus
from tests.training.test_train import TINY_FLAGS
from training import prune
from training.train import main as train_main


@pytest.mark.slow
def test_upcycle_distill_and_prune_from_the_command_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")

    def job(name, *flags):
        output = tmp_path / name
        train_main(
            ["--data", str(corpus), "--output", str(output), *TINY_FLAGS, *flags]
        )
        return output

    dense = job("dense", "--experts", "0")
    upcycled = job(
        "upcycled", "--experts", "4", "--init-from", str(dense / "model.keras")
    )
    model = keras.saving.load_model(upcycled / "model.keras")
    assert model.config.num_experts == 4
    assert model.config.switch_options.normalize_gates
    assert (upcycled / "vocab.txt").read_text() == (dense / "vocab.txt").read_text()

    student = job(
        "student", "--experts", "0", "--distill-from", str(upcycled / "model.keras")
    )
    student_model = keras.saving.load_model(student / "model.keras")
    assert student_model.config.num_experts is None
    assert (student / "serving" / "switch" / "1" / "saved_model.pb").exists()

    rows = prune.prune(
        prune.build_parser().parse_args(
            [
                str(upcycled / "model.keras"),
                "--keep",
                "2",
                "1",
                "--data",
                str(corpus),
                "--output",
                str(tmp_path / "pruned"),
                "--batch-size",
                "4",
                "--calibration-steps",
                "2",
                "--validation-steps",
                "2",
                "--latency-runs",
                "2",
            ]
        )
    )
    assert [row["experts"] for row in rows] == [4, 2, 1]
    assert rows[0]["parameters"] > rows[1]["parameters"] > rows[2]["parameters"]
    pruned = keras.saving.load_model(tmp_path / "pruned" / "keep_2" / "model.keras")
    assert pruned.config.num_experts == 2
    assert (tmp_path / "pruned" / "keep_1" / "serving" / "switch" / "1").is_dir()
    usage = json.loads((tmp_path / "pruned" / "expert_usage.json").read_text())
    assert sorted(usage) == ["block_1", "block_3"]
    assert "| 2 |" in (tmp_path / "pruned" / "pruning.md").read_text()
