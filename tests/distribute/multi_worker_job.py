"""One worker of a two-worker training job; prints its losses and weights.

    TF_CONFIG=... python -m tests.distribute.multi_worker_job [--unpatched] \
        -- <training.train flags>

With `--unpatched`, Keras runs without `keras_internals.fix_multi_worker_fit`,
to show the
upstream bug is still there.
"""

import hashlib
import json
import sys

from tf_switch import keras_internals
from training.train import parse_args, train


def main():
    argv = sys.argv[1:]
    if argv[0] == "--unpatched":
        keras_internals.fix_multi_worker_fit = lambda: None
        argv = argv[1:]
    model = train(parse_args(argv[argv.index("--") + 1 :]))
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    print(
        json.dumps(
            {"loss": model.history.history["loss"], "weights": digest.hexdigest()}
        )
    )


if __name__ == "__main__":
    main()
