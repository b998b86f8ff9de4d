"""Load and run a SavedModel the way TensorFlow Serving does, without the server.

The `tensorflow_model_server` binary cannot be installed here, so these checks
get as close to it as the tensorflow wheel allows:

- `run_signature_c_api`: the TensorFlow C API that ships in the wheel, through
  ctypes (`serving.c_api`: `TF_LoadSessionFromSavedModel` is
  `tensorflow::LoadSavedModel`, the loader TF Serving calls). By default it
  runs in a child process (`python -m serving.fidelity run`) that never
  imports TensorFlow's Python package: the process holds the C++ runtime plus
  the tensorflow-text op libraries, like the server, and none of the kernels
  that only the Python runtime registers (`EagerPyFunc`, `PyFunc`).
- `run_signature_tf1`: a `tf.compat.v1.Session` fed and fetched by the
  signature's tensor names, the way TF Serving's session path feeds.
- `graph_ops`, `disallowed_ops`, `signature_lint` (from `serving.lint`): the
  op allow-list and what TF Serving's REST API needs of the signatures.

Both runners check a request the way TF Serving's `predict_util.cc` does
(`serving.saved_model.prepare_request`). Errors come back as `ServingError`,
with the status code name.

Command line: `python -m serving.fidelity check EXPORT_DIR` prints the lint
problems and disallowed ops of an export and exits 1 if there are any.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from . import c_api
from .c_api import (  # noqa: F401  (public API)
    CApiSavedModel,
    tensorflow_c_library,
    tensorflow_text_op_libraries,
)
from .lint import (  # noqa: F401  (public API)
    check,
    child_op_registry,
    disallowed_ops,
    graph_ops,
    serving_op_registry,
    signature_lint,
)
from .saved_model import (  # noqa: F401  (public API)
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    PREDICT_METHOD_NAME,
    SERVE_TAG,
    prepare_request,
    read_meta_graph,
)
from .status import (  # noqa: F401  (public API)
    STATUS_CODE_NAMES,
    ServingError,
    code_name,
)

# --- Running a signature --------------------------------------------------------


def run_signature_c_api(export_dir, signature_name, inputs, *, isolated=True):
    """Runs a signature through the TensorFlow C API, as TF Serving would.

    Args:
        export_dir: the SavedModel directory.
        signature_name: e.g. "serving_default".
        inputs: dict of input key to numpy array (or nested list). The dtype is
            sent as given, like a PredictRequest's TensorProto: int64 ids into
            an int32 signature are INVALID_ARGUMENT, not cast. Strings may be
            bytes or str (encoded as UTF-8).
        isolated: run in a child process that has only the C++ runtime and
            the tensorflow-text ops, none of TensorFlow's Python runtime
            (default); False runs in this process (faster, but this process's
            Python-registered kernels, e.g. `EagerPyFunc`, are visible).

    Returns:
        dict of output key to numpy array; strings as object arrays of bytes.

    Raises:
        ServingError: a non-OK status, e.g. code "INVALID_ARGUMENT" when a
            `tf.debugging` check in the model rejects the input.
    """
    export_dir = os.path.abspath(os.fspath(export_dir))
    signatures = read_meta_graph(export_dir).signature_def
    feeds, aliases, fetches = prepare_request(signatures, signature_name, inputs)
    if isolated:
        outputs = _run_in_child(export_dir, feeds, fetches)
    else:
        with CApiSavedModel(export_dir) as model:
            outputs = model.run(feeds, fetches)
    return dict(zip(aliases, outputs, strict=True))


def _run_in_child(export_dir, feeds, fetches):
    with tempfile.TemporaryDirectory(prefix="tf_switch_fidelity_") as directory:
        request = {"export_dir": export_dir, "feeds": list(feeds), "fetches": fetches}
        with open(os.path.join(directory, "request.json"), "w") as f:
            json.dump(request, f)
        arrays = {f"input_{i}": array for i, array in enumerate(feeds.values())}
        np.savez(os.path.join(directory, "inputs.npz"), **arrays)
        c_api.child_command("run", directory)
        with open(os.path.join(directory, "response.json")) as f:
            response = json.load(f)
        if response["code"] != "OK":
            raise ServingError(response["code"], response["message"])
        # Our own file from our own child: object arrays hold bytes strings.
        with np.load(os.path.join(directory, "outputs.npz"), allow_pickle=True) as f:
            return [f[f"output_{i}"] for i in range(len(fetches))]


def _child_run(directory):
    with open(os.path.join(directory, "request.json")) as f:
        request = json.load(f)
    with np.load(os.path.join(directory, "inputs.npz"), allow_pickle=True) as f:
        arrays = [f[f"input_{i}"] for i in range(len(request["feeds"]))]
    response = {"code": "OK", "message": ""}
    try:
        with CApiSavedModel(request["export_dir"]) as model:
            outputs = model.run(
                dict(zip(request["feeds"], arrays, strict=True)), request["fetches"]
            )
        np.savez(
            os.path.join(directory, "outputs.npz"),
            **{f"output_{i}": array for i, array in enumerate(outputs)},
        )
    except ServingError as error:
        response = {"code": error.code, "message": error.message}
    with open(os.path.join(directory, "response.json"), "w") as f:
        json.dump(response, f)


def _check_dtypes(signature, feeds):
    import tensorflow as tf

    for alias, info in sorted(signature.inputs.items()):
        array = feeds[info.name]
        received = tf.string if array.dtype.kind in "USO" else array.dtype
        received, expected = tf.as_dtype(received), tf.as_dtype(info.dtype)
        if received != expected:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input {alias!r} ({info.name}) expects {expected.name} but "
                f"{received.name} is provided.",
            )


def run_signature_tf1(export_dir, signature_name, inputs):
    """Runs a signature in a TF1 session fed and fetched by tensor names.

    `tf.compat.v1.saved_model.loader.load` (tag "serve") restores the
    variables and runs the init op; the request is checked like TF Serving's
    and the dtypes must match the signature (a TF1 session would otherwise
    cast the feed silently, which the server does not). It runs in this
    process, so kernels that only TensorFlow's Python runtime registers run
    here though the server has none: a `tf.py_function` whose callback this
    process still holds runs; `run_signature_c_api` (isolated) refuses it.

    Args, Returns, Raises: as `run_signature_c_api`.
    """
    import tensorflow as tf

    export_dir = os.fspath(export_dir)
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(
                sess, [SERVE_TAG], export_dir
            )
        except tf.errors.OpError as error:
            raise ServingError(code_name(error.error_code), error.message) from error
        signatures = meta_graph.signature_def
        feeds, aliases, fetches = prepare_request(signatures, signature_name, inputs)
        _check_dtypes(signatures[signature_name], feeds)
        try:
            outputs = sess.run(fetches, feeds)
        except tf.errors.OpError as error:
            raise ServingError(code_name(error.error_code), error.message) from error
    return {
        alias: np.asarray(value) for alias, value in zip(aliases, outputs, strict=True)
    }


# --- Command line ---------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.fidelity")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="lint an export and its ops")
    check_parser.add_argument("export_dir")
    # The two below are this module's child processes: no tensorflow import.
    commands.add_parser("run").add_argument("directory")
    commands.add_parser("op-registry").add_argument("directory")
    args = parser.parse_args(argv)
    c_api.IN_CHILD = args.command in ("run", "op-registry")
    if args.command == "run":
        _child_run(args.directory)
        return 0
    if args.command == "op-registry":
        child_op_registry(args.directory)
        return 0
    problems = check(args.export_dir)
    print("\n".join(problems) if problems else f"{args.export_dir}: no problems.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
