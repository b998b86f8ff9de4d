"""What TF Serving's stock binary can run: the op allow-list and signature lint.

- `graph_ops`, `disallowed_ops`: an op is servable when the C++ runtime
  registers it (TF core, or the tensorflow-text `ops_lib` that the stock
  server links) and has a CPU kernel for it there. The registry is read in a
  child process that never imports TensorFlow's Python package
  (`serving_op_registry`), so kernels that only the Python runtime registers
  (`EagerPyFunc`, `PyFunc`) do not count.
- `signature_lint`: what TF Serving's REST API needs of the signatures
  (predict ones, and classify ones of the shape Classify runs).
"""

import ctypes
import functools
import json
import os
import tempfile

from . import c_api
from .saved_model import (
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD_NAME,
    CLASSIFY_OUTPUT_CLASSES,
    CLASSIFY_OUTPUT_SCORES,
    DEFAULT_SIGNATURE,
    INIT_OP_SIGNATURE,
    PREDICT_METHOD_NAME,
    read_meta_graph,
)
from .status import ServingError

# DataTypes that TF Serving's REST codec (util/json_tensor.cc) reads and writes.
_JSON_DTYPE_NAMES = frozenset(
    ["DT_FLOAT", "DT_DOUBLE", "DT_INT8", "DT_INT16", "DT_INT32", "DT_INT64"]
    + ["DT_UINT8", "DT_UINT32", "DT_UINT64", "DT_STRING", "DT_BOOL"]
)
_SERVING_KERNEL_DEVICES = frozenset(["CPU", "DEFAULT"])


def graph_ops(export_dir):
    """Op types in the "serve" MetaGraph: its graph and every library function.

    A node whose op is the name of a library function (a direct function
    call) counts through that function's own nodes, not as an op type.
    """
    graph_def = read_meta_graph(os.fspath(export_dir)).graph_def
    functions = {f.signature.name for f in graph_def.library.function}
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops - functions


@functools.cache
def serving_op_registry():
    """What the TF Serving-like process registers, read in a child process.

    The child loads `libtensorflow_cc.so.2` through ctypes without importing
    TensorFlow's Python package (so no Python-registered kernels), lists the
    core ops (`TF_GetAllOpList`), TF_LoadLibrary's the tensorflow-text op
    libraries and lists what each registers (`TF_GetOpList`), then lists all
    kernels (`TF_GetAllRegisteredKernels`).

    Returns:
        dict with "core_ops" (set), "text_ops" (dict of library file name to
        set of ops) and "kernels" (dict of op to set of device types).
    """
    from tensorflow.core.framework import kernel_def_pb2, op_def_pb2

    with tempfile.TemporaryDirectory(prefix="tf_switch_ops_") as directory:
        c_api.child_command("op-registry", directory)
        with open(os.path.join(directory, "op_registry.json")) as f:
            files = json.load(f)

        def read(name, message):
            with open(os.path.join(directory, name), "rb") as f:
                message.ParseFromString(f.read())
            return message

        core = read(files["core_ops"], op_def_pb2.OpList())
        text = {
            os.path.basename(path): read(name, op_def_pb2.OpList())
            for path, name in files["text_ops"].items()
        }
        kernels = {}
        for kernel in read(files["kernels"], kernel_def_pb2.KernelList()).kernel:
            kernels.setdefault(kernel.op, set()).add(kernel.device_type)
    return {
        "core_ops": {op.name for op in core.op},
        "text_ops": {path: {op.name for op in ops.op} for path, ops in text.items()},
        "kernels": kernels,
    }


def child_op_registry(directory):
    """The child process's half of `serving_op_registry`."""
    lib = c_api.library()
    files = {"core_ops": "core_ops.pb", "text_ops": {}, "kernels": "kernels.pb"}
    core = lib.TF_GetAllOpList()
    with open(os.path.join(directory, files["core_ops"]), "wb") as f:
        f.write(ctypes.string_at(core.contents.data, core.contents.length))
    lib.TF_DeleteBuffer(core)
    for i, (path, op_list) in enumerate(c_api.load_text_ops().items()):
        files["text_ops"][path] = f"text_ops_{i}.pb"
        with open(os.path.join(directory, f"text_ops_{i}.pb"), "wb") as f:
            f.write(op_list)
    status = c_api.TFStatus(lib)
    kernels = lib.TF_GetAllRegisteredKernels(status.handle)
    status.check()
    with open(os.path.join(directory, files["kernels"]), "wb") as f:
        f.write(ctypes.string_at(kernels.contents.data, kernels.contents.length))
    lib.TF_DeleteBuffer(kernels)
    with open(os.path.join(directory, "op_registry.json"), "w") as f:
        json.dump(files, f)


def disallowed_ops(export_dir):
    """Ops of the export that TF Serving's stock CPU binary cannot run.

    Allowed: an op that TF core or tensorflow-text's `ops_lib` registers (as
    read by `serving_op_registry`, without TensorFlow's Python runtime) and
    that has a CPU kernel there. So `EagerPyFunc`/`PyFunc` (`tf.py_function`,
    `tf.numpy_function`: registered ops whose kernels live in the Python
    runtime), TPU-only ops and ops of other custom-op packages are flagged.

    Returns:
        set of op type names; empty when every op is servable.
    """
    registry = serving_op_registry()
    registered = set(registry["core_ops"]).union(*registry["text_ops"].values())
    return {
        op
        for op in graph_ops(export_dir)
        if op not in registered
        or not registry["kernels"].get(op, set()) & _SERVING_KERNEL_DEVICES
    }


# --- Signature lint -------------------------------------------------------------


def _tensor(key, info):
    from tensorflow.core.framework import types_pb2

    shape = info.tensor_shape
    dims = "?" if shape.unknown_rank else ",".join(str(d.size) for d in shape.dim)
    return f'"{key}" {types_pb2.DataType.Name(info.dtype)} [{dims}]'


def classify_problems(where, signature):
    """What keeps a classify-method signature from TF Serving's Classify
    (`classifier.cc`: one DT_STRING input "inputs" of serialized tf.Examples,
    outputs "classes" DT_STRING and/or "scores" DT_FLOAT, both
    [batch, num_classes] and agreeing on num_classes)."""
    from tensorflow.core.framework import types_pb2

    problems = []
    keep = f'or keep method_name "{PREDICT_METHOD_NAME}".'
    inputs = signature.inputs
    info = inputs.get(CLASSIFY_INPUTS)
    if (
        len(inputs) != 1
        or info is None
        or info.dtype != types_pb2.DT_STRING
        or (not info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) != 1)
    ):
        found = ", ".join(_tensor(k, v) for k, v in sorted(inputs.items())) or "none"
        problems.append(
            f'{where}: method_name is "{CLASSIFY_METHOD_NAME}", but Classify feeds '
            f'one input "{CLASSIFY_INPUTS}" DT_STRING [-1] (serialized tf.Examples); '
            f"it has {found}. Give it that input, {keep}"
        )
    outputs = signature.outputs
    wanted = {CLASSIFY_OUTPUT_CLASSES: "DT_STRING", CLASSIFY_OUTPUT_SCORES: "DT_FLOAT"}
    known = [key for key in wanted if key in outputs]
    wrong = [
        key
        for key in known
        if types_pb2.DataType.Name(outputs[key].dtype) != wanted[key]
        or (
            not outputs[key].tensor_shape.unknown_rank
            and len(outputs[key].tensor_shape.dim) != 2
        )
    ]
    widths = {
        outputs[key].tensor_shape.dim[1].size
        for key in known
        if key not in wrong and not outputs[key].tensor_shape.unknown_rank
    }
    if not known or wrong or len(outputs) > 2 or len(widths - {-1}) > 1:
        found = ", ".join(_tensor(k, v) for k, v in sorted(outputs.items())) or "none"
        problems.append(
            f'{where}: method_name is "{CLASSIFY_METHOD_NAME}", but Classify needs '
            f'one or two outputs, "{CLASSIFY_OUTPUT_CLASSES}" DT_STRING and/or '
            f'"{CLASSIFY_OUTPUT_SCORES}" DT_FLOAT, each [batch, num_classes] with '
            f"the same num_classes; it has {found}. Give it those outputs, {keep}"
        )
    return problems


def signature_lint(export_dir):
    """Problems TF Serving's APIs would have with the signatures.

    Checks: a "serve" MetaGraph exists; "serving_default" is present; every
    signature's method_name is "tensorflow/serving/predict", or
    "tensorflow/serving/classify" with the shape Classify runs
    (`classify_problems`); every input and output dtype is one the REST JSON
    codec reads (no bfloat16, half, ...); every output has a batch dimension
    (rank >= 1, dim 0 unknown or equal to the inputs' fixed batch size),
    which the row ("instances") format needs.

    Returns:
        list of human-readable problem strings; empty when there are none.
    """
    from tensorflow.core.framework import types_pb2

    try:
        signatures = read_meta_graph(os.fspath(export_dir)).signature_def
    except ServingError as error:
        return [error.message]
    problems = []
    if DEFAULT_SIGNATURE not in signatures:
        names = sorted(set(signatures) - {INIT_OP_SIGNATURE})
        problems.append(
            f'No "{DEFAULT_SIGNATURE}" signature (found {names}): requests '
            "without a signature_name would fail."
        )
    for name, signature in sorted(signatures.items()):
        if name == INIT_OP_SIGNATURE:
            continue
        where = f'Signature "{name}"'
        if signature.method_name == CLASSIFY_METHOD_NAME:
            problems += classify_problems(where, signature)
        elif signature.method_name != PREDICT_METHOD_NAME:
            problems.append(
                f'{where}: method_name is "{signature.method_name}", expected '
                f'"{PREDICT_METHOD_NAME}" (or "{CLASSIFY_METHOD_NAME}" with the '
                "shape Classify runs)."
            )
        tensors = [("input", k, v) for k, v in sorted(signature.inputs.items())]
        tensors += [("output", k, v) for k, v in sorted(signature.outputs.items())]
        for kind, key, info in tensors:
            dtype = types_pb2.DataType.Name(info.dtype)
            if dtype not in _JSON_DTYPE_NAMES:
                problems.append(
                    f'{where}: {kind} "{key}" has dtype {dtype}, which TF '
                    "Serving's REST API cannot encode; cast it (e.g. to float32)."
                )
        batch_sizes = {
            info.tensor_shape.dim[0].size
            for info in signature.inputs.values()
            if not info.tensor_shape.unknown_rank and info.tensor_shape.dim
        }
        for key, info in sorted(signature.outputs.items()):
            shape = info.tensor_shape
            if shape.unknown_rank:
                problems.append(
                    f'{where}: output "{key}" has unknown rank, so it cannot be '
                    "shown to have a batch dimension; give it a static rank."
                )
            elif not shape.dim:
                problems.append(
                    f'{where}: output "{key}" is a scalar; every output needs a '
                    "batch dimension (dim 0) for the row format."
                )
            elif shape.dim[0].size != -1 and batch_sizes != {shape.dim[0].size}:
                problems.append(
                    f'{where}: output "{key}" has a fixed dim 0 of '
                    f"{shape.dim[0].size}, but the inputs' batch dimension is "
                    f"{sorted(batch_sizes)} (-1: any); dim 0 must be the batch."
                )
    return problems


def check(export_dir):
    """Lint problems and disallowed ops of an export, as readable lines."""
    problems = signature_lint(export_dir)
    registry = serving_op_registry()
    registered = set(registry["core_ops"]).union(*registry["text_ops"].values())
    for op in sorted(disallowed_ops(export_dir)):
        why = "has no CPU kernel" if op in registered else "is not registered"
        problems.append(f"Op {op} {why} in TF Serving (TF core + tensorflow-text).")
    return problems
