"""Latency of `:predict` through the local REST server vs in process.

    .venv/bin/python benchmarks/serving_speed.py --export exports/switch/1
    .venv/bin/python benchmarks/serving_speed.py            # a tiny export it builds

Both paths run the same SavedModel signature in one process, interleaved
request by request: in process (`loaded.signatures[...]`) and over HTTP on
127.0.0.1 (`serving.server`, keep-alive connection, JSON columnar format).
Prints p50 / p99 latency for batch 1 and 32 and the overhead of the server.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (ops of the export)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from serving import server as server_lib  # noqa: E402
from tf_switch.export import export_for_serving  # noqa: E402


def tiny_export(base):
    from tests.tiny_export import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return export_for_serving(tiny_model(tokenizer), tokenizer, base, "switch")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="a version dir <base>/<name>/<version>")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--length", type=int, default=8)
    args = parser.parse_args()
    print("Command:", " ".join(sys.argv))
    path = args.export or tiny_export(tempfile.mkdtemp())
    model_dir = os.path.dirname(path)  # TF Serving's --model_base_path
    name = os.path.basename(model_dir)
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    server = server_lib.make_server(model_dir, name, port=0, poll_s=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    print(
        f"{'batch':>5} {'in-process p50':>15} {'p99':>8} {'server p50':>11} "
        f"{'p99':>8} {'overhead p50':>13}"
    )
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        ids = rng.integers(5, 100, size=(batch, args.length)).astype(np.int32)
        body = json.dumps({"inputs": ids.tolist()}).encode()
        local, remote = [], []
        for index in range(args.requests + 10):
            start = time.perf_counter()
            serve(token_ids=tf.constant(ids))
            middle = time.perf_counter()
            connection.request("POST", f"/v1/models/{name}:predict", body=body)
            response = connection.getresponse()
            response.read()
            end = time.perf_counter()
            assert response.status == 200
            if index >= 10:  # warm-up
                local.append((middle - start) * 1e3)
                remote.append((end - middle) * 1e3)
        local_p50, remote_p50 = statistics.median(local), statistics.median(remote)
        print(
            f"{batch:>5} {local_p50:>12.2f} ms {percentile(local, 0.99):>5.2f} ms "
            f"{remote_p50:>8.2f} ms {percentile(remote, 0.99):>5.2f} ms "
            f"{remote_p50 - local_p50:>10.2f} ms"
        )
    server.shutdown()


if __name__ == "__main__":
    main()
