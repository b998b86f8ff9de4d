"""Server memory under the largest requests the limits allow (issue 13, "Done
when"): `python -m serving.server` with its default limits, in a process of
its own on 127.0.0.1, while 8 clients send for 30 s, each in turn,

- the largest answer the response budget lets through (full `serving_default`
  logits for as many rows as fit the 16 MiB budget, about 13 MB of JSON), and
- the largest body the body limit lets in (1 MiB of token ids, whose logits
  would be about 1.7 GB of JSON: refused before running, 400).

The server's resident memory (VmRSS, sampled every 0.1 s) must stay within
`RSS_GROWTH_BOUND` of what it was before the load; docs/serving.md states
the bound and the measured peak.
"""

import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from serving.flags import DEFAULT_MAX_BODY_BYTES
from serving.responses import DEFAULT_MAX_RESPONSE_BYTES, ResponseBudget
from tests.serving.rest import NAME
from tests.tiny_export import LENGTH

CLIENTS = 8
SECONDS = 30
RSS_GROWTH_BOUND = 512 << 20  # 2 x (8 slots x (16 MiB JSON + 8 MiB) + 64 x 1 MiB)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATH = f"/v1/models/{NAME}:predict"


def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) << 10


def _start(model_dir):
    """The server process and its port (read from its log)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model_base_path", model_dir]
        + ["--model_name", NAME, "--port", "0", "--file_system_poll_wait_seconds", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.SimpleQueue()

    def read():  # keep draining the log, or the server blocks on a full pipe
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, "the server exited"
            continue
        match = re.search(r"REST API at http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return process, int(match.group(1))
    process.kill()
    pytest.fail("the server did not start within 120 s")


def _largest_bodies():
    """(largest answer within the budget, largest body within the limit)."""
    rng = np.random.default_rng(0)
    two_rows = ResponseBudget().estimate(
        {
            "logits": np.zeros((2, LENGTH, 108), np.float32),
            "next_token": np.zeros(2, np.int32),
        },
        row_format=True,
    ) - ResponseBudget().estimate({}, row_format=True)
    rows = (DEFAULT_MAX_RESPONSE_BYTES - 64) * 2 // two_rows
    ids = rng.integers(5, 100, (rows, LENGTH)).tolist()
    answer = json.dumps({"instances": ids}).encode()
    row = json.dumps([10] * LENGTH)  # '[10, 10, ...]', 2-digit ids
    count = (DEFAULT_MAX_BODY_BYTES - 20) // (len(row) + 2)
    body = ('{"inputs": [' + ", ".join([row] * count) + "]}").encode()
    assert DEFAULT_MAX_BODY_BYTES - 200 < len(body) <= DEFAULT_MAX_BODY_BYTES
    return answer, body, rows


@pytest.mark.slow
def test_memory_stays_bounded_under_the_largest_requests(exported):
    answer_request, body_request, rows = _largest_bodies()
    process, port = _start(exported["model_dir"])
    statuses, errors, samples = [], [], []
    stop = threading.Event()

    def post(connection, body):
        connection.request("POST", PATH, body=body)
        response = connection.getresponse()
        return response.status, response.read()

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        status, payload = post(connection, answer_request)  # warm up both paths
        assert status == 200, payload[:300]
        assert len(json.loads(payload)["predictions"]) == rows
        status, payload = post(connection, body_request)
        assert status == 400 and b"the request was not run" in payload, payload[:300]
        connection.close()
        baseline = _rss(process.pid)

        def sample():
            while not stop.wait(0.1):
                samples.append(_rss(process.pid))

        def client(k):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                turn = k
                while not stop.is_set():
                    body = answer_request if turn % 2 else body_request
                    status, payload = post(connection, body)
                    statuses.append((turn % 2, status, len(payload)))
                    turn += 1
            except Exception as error:  # reported below, with the statuses
                errors.append(repr(error))
            finally:
                connection.close()

        threads = [threading.Thread(target=sample)]
        threads += [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(SECONDS)
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=30)
    assert not errors, errors[:3]
    answers = [s for big_answer, s, _ in statuses if big_answer]
    refusals = [s for big_answer, s, _ in statuses if not big_answer]
    assert answers and set(answers) == {200}, sorted(set(answers))
    assert refusals and set(refusals) == {400}, sorted(set(refusals))
    growth = max(samples) - baseline
    print(
        f"\n{len(statuses)} requests ({len(answers)} answers of "
        f"{max(n for *_, n in statuses) / 1e6:.1f} MB) in {SECONDS} s; RSS "
        f"{baseline / 2**20:.0f} MiB before, peak {max(samples) / 2**20:.0f} MiB, "
        f"growth {growth / 2**20:.0f} MiB (bound {RSS_GROWTH_BOUND >> 20} MiB)"
    )
    assert growth <= RSS_GROWTH_BOUND
