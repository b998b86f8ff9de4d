"""Expert-parallel checks that need D logical CPUs, run in fresh processes.

Logical devices must be configured before TensorFlow runs any op, and a
collective group key can be initialized once per process, so
`tests/distribute/test_expert_parallel.py` runs the checks here in fresh
subprocesses with a hard timeout:

    python -m tests.distribute.expert_parallel_worker layer,serving_copy 2

runs the named checks (comma-separated) on 2 logical CPUs; the last line of
stdout holds their results as one JSON object. The checks live in
`expert_parallel_checks` (layer, layer_einsum, layer_shared, bfloat16, serving_copy,
errors) and `expert_parallel_fit` (fit, with an optional directory for the
save, load and resume checks).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tests.distribute.expert_parallel_checks import (  # noqa: E402
    check_bfloat16,
    check_errors,
    check_layer,
    check_serving_copy,
)
from tests.distribute.expert_parallel_fit import check_fit  # noqa: E402
from tf_switch.distribute import split_cpu  # noqa: E402

# A collective that waits longer than this fails the check (the default is
# for real training steps; a test's steps take well under a second).
TIMEOUT_SECONDS = 30


def main(argv):
    checks, num_devices = argv[1].split(","), int(argv[2])
    strategy = tf.distribute.MirroredStrategy(split_cpu(num_devices))
    import tf_switch.distribute.expert_parallel as expert_parallel

    expert_parallel.DEFAULT_TIMEOUT_SECONDS = TIMEOUT_SECONDS
    result = {}
    for check in checks:
        if check == "layer":
            result.update(check_layer(strategy))
        elif check == "layer_einsum":  # the dispatch TPUs use
            result["einsum"] = check_layer(strategy, dispatch="einsum")
        elif check == "layer_shared":  # a shared expert stays data-parallel
            result["shared"] = check_layer(strategy, shared=True)
        elif check == "bfloat16":
            result.update(check_bfloat16(strategy))
        elif check == "serving_copy":
            result.update(check_serving_copy(strategy))
        elif check == "fit":
            result.update(check_fit(strategy, *argv[3:]))
        elif check == "errors":  # last: a timed-out collective aborts the rest
            result.update(check_errors(strategy))
        else:
            raise SystemExit(f"unknown check {check!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
