"""Two workers on 127.0.0.1 train one model with MultiWorkerMirroredStrategy."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.training.synthetic import write_corpus
from tests.training.test_train import TINY_FLAGS

pytestmark = pytest.mark.slow
TIMEOUT = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(output, corpus, *options):
    """Starts worker 0 (the chief) and worker 1; returns their processes.

    Their output goes to files next to `output` (a pipe nobody reads while
    the workers train could fill up and block one worker, and its peer with
    it)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    flags = [
        *TINY_FLAGS,
        "--data",
        str(corpus),
        "--output",
        str(output),
        "--strategy",
        "multi_worker",
        "--epochs",
        "3",
    ]
    processes = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        environment = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        command = [sys.executable, "-m", "tests.distribute.multi_worker_job"]
        logs = [output.parent / f"{output.name}.{index}.{s}" for s in ("out", "err")]
        with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
            process = subprocess.Popen(
                [*command, *options, "--", *flags],
                env=environment,
                stdout=stdout,
                stderr=stderr,
            )
        process.logs = logs
        processes.append(process)
    return processes


def _results(processes):
    """Each worker's (exit code, last stdout line, stderr)."""
    results = []
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT)
            stdout, stderr = (path.read_text() for path in process.logs)
            lines = stdout.strip().splitlines()
            results.append((process.returncode, lines[-1] if lines else "", stderr))
    finally:
        for process in processes:
            process.kill()
    return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_two_workers_train_in_lock_step_and_resume_after_kill(corpus, tmp_path):
    results = _results(_start_workers(tmp_path / "a", corpus))
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    chief, worker = (json.loads(line) for _, line, _ in results)
    assert len(chief["loss"]) == 3 and chief["loss"][-1] < chief["loss"][0]
    assert chief == worker  # identical losses and weights
    # The chief alone wrote the run's files (both share one --output here).
    assert (tmp_path / "a" / "serving" / "switch" / "1" / "saved_model.pb").exists()
    assert len((tmp_path / "a" / "history.csv").read_text().splitlines()) == 4

    # Kill both workers after the first backup, rerun both: they resume.
    processes = _start_workers(tmp_path / "b", corpus)
    metadata = tmp_path / "b" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + TIMEOUT
    while not metadata.exists() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), "a worker ended early"
        time.sleep(0.2)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert json.loads(metadata.read_text())["epoch"] < 2
    results = _results(_start_workers(tmp_path / "b", corpus))
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    resumed = [json.loads(line) for _, line, _ in results]
    assert resumed[0]["weights"] == resumed[1]["weights"] == chief["weights"]
    weights = [
        keras.saving.load_model(tmp_path / run / "model.keras").get_weights()
        for run in ("a", "b")
    ]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_still_needs_the_fix(corpus, tmp_path):
    # When this fails, Keras has fixed keras-team/keras#20585: drop
    # keras_internals.fix_multi_worker_fit for the releases that have the fix.
    results = _results(_start_workers(tmp_path / "run", corpus, "--unpatched"))
    assert any(code != 0 for code, _, _ in results)
    errors = " ".join(stderr for _, _, stderr in results)
    assert "PerReplica" in errors or "Invalid reduction dimension" in errors
