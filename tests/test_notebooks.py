"""The Colab notebooks in colab/: committed clean, and run top to bottom on CPU.

Each notebook runs with papermill in a fresh kernel, with `INSTALL = False`
and tiny parameters (a synthetic corpus, a few steps, a temporary output
directory); a failing cell fails the test. The tests then check what the
notebook produced, not only that it ran.
"""

import ast
import csv
import json
import os
import re
import signal
import time
from pathlib import Path

import nbformat
import pytest

from tests.training.synthetic import synthetic_text

COLAB = Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = ("train_on_tpu", "serve_and_query", "explore_routing", "vision_experts")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_URL = (
    "https://colab.research.google.com/github/tf-switch/tf-switch/blob/main/colab/"
    "{name}.ipynb"
)
CELL_TIMEOUT_S = 300

TRAIN_TINY = {
    "EPOCHS": 2,
    "STEPS_PER_EPOCH": 6,
    "VALIDATION_STEPS": 2,
    "BATCH_SIZE": 4,
    "SEQUENCE_LENGTH": 16,
    "VOCAB_SIZE": 120,
    "PROMPT": "KING:",
    "GENERATE_TOKENS": 8,
    "EXTRA_SETTINGS": {"warmup_steps": 2, "sample_tokens": 8},
}
SERVE_TINY = {
    "PROMPT": "KING:",
    "MAX_NEW_TOKENS": 6,
    "SENTENCE": "The king loves the crown, and sleeps.",
    "MAX_ROUTE_TOKENS": 16,
    "STARTUP_TIMEOUT_S": 120,
}
EXPLORE_TINY = {
    "HIDDEN_DIM": 8,
    "NUM_EXPERTS": 4,
    "INTERMEDIATE_DIM": 16,
    "SEQUENCE_LENGTH": 32,
    "CAPACITY_FACTORS": [0.5, 1.0, 2.0],
    "GROUP_SIZES": [32, 128],
    "TRAIN_SEQUENCES": 64,
    "VALIDATION_SEQUENCES": 16,
    "BATCH_SIZE": 16,
    "EPOCHS": 3,
    "QUALITY_CAPACITY_FACTORS": [0.5, 1.25, None],
    "BALANCE_WEIGHTS": [0.01, 0.1],
}
VISION_TINY = {
    "EPOCHS": 2,
    "BATCH_SIZE": 16,
    "MADE_UP_IMAGES_PER_CLASS": 6,
    "PRESET_CHANGES": {"hidden_dim": 16, "intermediate_dim": 32, "num_layers": 2},
    "SHOW_IMAGES": 3,
    "CAPACITY_FACTORS": [0.25, 1.0],
}
# Parameters each test sets besides its tiny ones (paths, INSTALL).
TEST_PARAMETERS = {
    "train_on_tpu": {"INSTALL", "OUTPUT", "DATA", *TRAIN_TINY},
    "serve_and_query": {"INSTALL", "RUN_DIR", *SERVE_TINY},
    "explore_routing": {"INSTALL", "OUTPUT", *EXPLORE_TINY},
    "vision_experts": {"INSTALL", "OUTPUT", *VISION_TINY},
}


def _read(name):
    return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def _parameters_cell(notebook):
    cells = [
        cell
        for cell in notebook.cells
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    assert cells[0].cell_type == "code"
    return cells[0]


def _assigned(source):
    """{name: value} of the constant assignments in a parameters cell."""
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), "a parameters cell only assigns"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_parametrized(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"outputs in a committed cell: {cell.source}"
            assert cell.execution_count is None

    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    assert f"[![Open In Colab]({BADGE_IMAGE})]({COLAB_URL.format(name=name)})" in (
        first.source
    )

    parameters = _assigned(_parameters_cell(notebook).source)
    # Colab installs; CI turns it off. The repository URL is a marked placeholder.
    assert parameters["INSTALL"] is True
    assert parameters["REPO_URL"] == "https://github.com/tf-switch/tf-switch"
    # A name the tests pass that the cell lacks would be injected but unused,
    # and CI would silently run the notebook at full size.
    assert TEST_PARAMETERS[name] <= set(parameters)

    # Every picture is explained by the markdown cell just before it.
    for before, cell in zip(notebook.cells, notebook.cells[1:], strict=False):
        if cell.cell_type == "code" and re.search(r"^show\(", cell.source, re.M):
            assert before.cell_type == "markdown", cell.source[:200]


def test_serve_notebook_fallback_training_settings_are_valid(tmp_path):
    # CI serves train_on_tpu's export; in a fresh Colab runtime the notebook
    # trains first with TRAIN_SETTINGS, so they must stay valid settings.
    from training.config import TrainConfig

    parameters = _assigned(_parameters_cell(_read("serve_and_query")).source)
    config = TrainConfig(**parameters["TRAIN_SETTINGS"], output=str(tmp_path))
    assert config.epochs >= 1 and config.steps_per_epoch >= 1


def test_colab_readme_links_every_notebook():
    readme = (COLAB / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"({COLAB_URL.format(name=name)})" in readme, name


def _execute(name, folder, parameters):
    import papermill

    output = folder / f"{name}.executed.ipynb"
    started = time.monotonic()
    papermill.execute_notebook(
        str(COLAB / f"{name}.ipynb"),
        str(output),
        parameters={"INSTALL": False, **parameters},
        kernel_name="python3",
        cwd=str(folder),
        progress_bar=False,
        execution_timeout=CELL_TIMEOUT_S,
    )
    print(f"{name}: executed in {time.monotonic() - started:.1f} s")
    return nbformat.read(output, as_version=4)


def _outputs(notebook):
    """All stream text of an executed notebook, and its number of PNGs."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream":
                texts.append(output.text)
            images += "image/png" in output.get("data", {})
    return "".join(texts), images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_on_tpu.ipynb, run once; serve_and_query.ipynb serves its export."""
    folder = tmp_path_factory.mktemp("train_on_tpu")
    corpus = folder / "corpus.txt"
    corpus.write_text(synthetic_text(1200))
    run = folder / "run"
    notebook = _execute(
        "train_on_tpu",
        folder,
        {"OUTPUT": str(run), "DATA": str(corpus), **TRAIN_TINY},
    )
    return run, notebook


@pytest.mark.slow
def test_train_on_tpu_falls_back_trains_and_exports(trained):
    run, notebook = trained
    text, images = _outputs(notebook)
    # No TPU here: the notebook says where it trained instead.
    assert "No TPU found: training on the CPU instead." in text
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TRAIN_TINY["EPOCHS"]
    assert any(key.endswith("/dropped_fraction") for key in rows[0])
    for picture in ("routing_metrics.png", "loss.png", "expert_load.png"):
        assert (run / picture).stat().st_size > 0, picture
    assert images >= 3
    export = run / "serving" / "switch" / "1"
    assert (export / "saved_model.pb").exists()
    assert (export / "assets" / "vocab.txt").exists()
    assert "signatures: ['generate', 'next_token', 'route', 'serving_default']" in text
    assert "generate (greedy): KING:" in text
    assert (run / "serving-export.zip").stat().st_size > 0


def _stop_leftover_servers(run):
    """Kills server processes the notebook started and did not stop."""
    pid_file = run / "servers.pid"
    if not pid_file.exists():
        return []
    leftovers = []
    for pid in map(int, pid_file.read_text().split()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        if b"serving." in command:  # ours, not a reused pid
            leftovers.append(pid)
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.mark.slow
def test_serve_and_query_answers_over_rest_and_grpc_and_draws_routes(trained):
    run, _ = trained
    folder = run.parent
    try:
        notebook = _execute(
            "serve_and_query", folder, {"RUN_DIR": str(run), **SERVE_TINY}
        )
    finally:
        leftovers = _stop_leftover_servers(run)
    assert leftovers == [], "the notebook left servers running"
    text, images = _outputs(notebook)
    assert f"Using the export of {run}." in text
    assert "ready after" in text
    results = json.loads((run / "query_results.json").read_text())
    for kind in ("rest_text", "grpc_text"):
        assert results[kind].startswith("KING:"), results[kind]
        assert len(results[kind]) > len("KING:")
    assert results["greedy_same"] is True
    assert results["routes_agree"] is True
    assert results["batch_same"] is True  # a sampled row ignores its batch
    generated = results["generated_experts"]  # [new tokens, Switch layers]
    assert len(generated) == SERVE_TINY["MAX_NEW_TOKENS"]
    assert all(len(row) == 2 and all(-1 <= e < 8 for e in row) for row in generated)
    experts = results["experts"]
    assert len(experts) == len(results["tokens"]) > 5
    assert results["tokens"][0] == "[BOS]"
    # Two Switch layers in the tiny preset (every other block), 8 experts.
    assert all(len(row) == 2 and all(-1 <= e < 8 for e in row) for row in experts)
    assert (run / "routing.png").stat().st_size > 0
    assert images >= 1


@pytest.mark.slow
def test_explore_routing_runs_its_experiments(tmp_path):
    output = tmp_path / "plots"
    notebook = _execute(
        "explore_routing", tmp_path, {"OUTPUT": str(output), **EXPLORE_TINY}
    )
    _, images = _outputs(notebook)
    pictures = ("capacity_vs_dropped", "capacity_vs_quality", "expert_load", "jitter")
    for picture in pictures:
        assert (output / f"{picture}.png").stat().st_size > 0, picture
    assert images == len(pictures)
    results = json.loads((output / "results.json").read_text())

    dropped = results["dropped_fraction"]["by_group_size"]
    assert sorted(dropped) == ["128", "32"]
    for fractions in dropped.values():
        # Half the slots for all the tokens: at least half dropped. More
        # capacity never drops more.
        assert fractions[0] >= 0.5 - 1e-6
        assert fractions == sorted(fractions, reverse=True)

    quality = results["quality"]
    assert quality["None"]["dropped_fraction"] == 0.0  # dropless
    assert quality["0.5"]["dropped_fraction"] >= 0.5 - 1e-6
    assert "dense" in quality

    for load in results["expert_load"].values():
        shares = load["fractions"]  # [experts, epochs]
        assert len(shares) == EXPLORE_TINY["NUM_EXPERTS"]
        for epoch in zip(*shares, strict=True):
            assert sum(epoch) == pytest.approx(1.0, abs=1e-4)
    assert sorted(results["jitter"]) == ["0.0", "0.1"]


@pytest.mark.slow
def test_vision_experts_trains_draws_patches_and_skips_them(tmp_path):
    output = tmp_path / "vision"
    notebook = _execute(
        "vision_experts", tmp_path, {"OUTPUT": str(output), **VISION_TINY}
    )
    text, images = _outputs(notebook)
    assert "No TPU found: training on the CPU/GPU instead." in text
    for picture in ("expert_patches.png", "capacity.png", "loss.png"):
        assert (output / picture).stat().st_size > 0, picture
    assert images == 2
    results = json.loads((output / "vision_results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 1.0
    experts = results["experts"]  # [images, patches, Switch layers]
    assert len(experts) == VISION_TINY["SHOW_IMAGES"]
    # vit-tiny with 2 blocks: one Switch layer of 8 experts; served dropless.
    assert all(len(patch) == 1 and 0 <= patch[0] < 8 for e in experts for patch in e)
    assert len(experts[0]) == 49
    for points in results["capacity"].values():
        routed = [point["routed"] for point in points]
        # Capacity 0.25 routes at most ceil(0.25 * 49 / 8) = 2 of 49 patches
        # per expert; 1.0 routes more.
        assert routed[0] <= 8 * 2 / 49 + 1e-6 and routed[0] < routed[1]
