"""Load and run a SavedModel the way TensorFlow Serving does, without the server.

The `tensorflow_model_server` binary cannot be installed here, so these checks
get as close to it as the tensorflow wheel allows:

- `run_signature_c_api`: the TensorFlow C API that ships in the wheel
  (`libtensorflow_cc.so.2`), through ctypes. `TF_LoadSessionFromSavedModel`
  is `tensorflow::LoadSavedModel`, the loader TF Serving calls (restore, init
  op, op registration); `TF_SessionRun` is its `Session::Run`. By default it
  runs in a child process (`python -m serving.fidelity run`) that never
  imports TensorFlow's Python package: the process holds the C++ runtime plus
  the tensorflow-text op libraries, like the server, and none of the kernels
  that only the Python runtime registers (`EagerPyFunc`, `PyFunc`).
- `run_signature_tf1`: a `tf.compat.v1.Session` fed and fetched by the
  signature's tensor names, the way TF Serving's session path feeds.
- `graph_ops`, `disallowed_ops`: the op allow-list. An op is servable when
  the C++ runtime registers it (TF core, or the tensorflow-text `ops_lib`
  that the stock server links) and has a CPU kernel for it there.
- `signature_lint`: what TF Serving's REST API needs of the signatures.

Both runners check a request the way TF Serving's `predict_util.cc` does
before it runs the session, with the same status codes: an unknown signature
is FAILED_PRECONDITION, missing or unknown input keys are INVALID_ARGUMENT.
Errors come back as `ServingError`, with the status code name.

Command line: `python -m serving.fidelity check EXPORT_DIR` prints the lint
problems and disallowed ops of an export and exits 1 if there are any.
"""

import argparse
import ctypes
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SERVE_TAG = "serve"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"
# TF2 SavedModels keep their init op under this key; TF Serving hides it.
INIT_OP_SIGNATURE = "__saved_model_init_op"

# absl::StatusCode, as `TF_GetCode` and `tf.errors.OpError.error_code` give it.
STATUS_CODE_NAMES = tuple(
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND "
    "ALREADY_EXISTS PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION "
    "ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS "
    "UNAUTHENTICATED".split()
)

# TF_DataType (tensorflow/core/framework/types.proto) of each numpy dtype.
_TF_STRING = 7
_TF_DTYPES = {
    np.dtype(name): code
    for name, code in [("float32", 1), ("float64", 2), ("int32", 3), ("uint8", 4)]
    + [("int16", 5), ("int8", 6), ("complex64", 8), ("int64", 9), ("bool", 10)]
    + [("uint16", 17), ("complex128", 18), ("float16", 19), ("uint32", 22)]
    + [("uint64", 23)]
}
_NUMPY_DTYPES = {code: dtype for dtype, code in _TF_DTYPES.items()}

# DataTypes that TF Serving's REST codec (util/json_tensor.cc) reads and writes.
_JSON_DTYPE_NAMES = frozenset(
    ["DT_FLOAT", "DT_DOUBLE", "DT_INT8", "DT_INT16", "DT_INT32", "DT_INT64"]
    + ["DT_UINT8", "DT_UINT32", "DT_UINT64", "DT_STRING", "DT_BOOL"]
)
_SERVING_KERNEL_DEVICES = frozenset(["CPU", "DEFAULT"])
# True in this module's child processes, which never import TF's Python code.
_IN_CHILD = False


class ServingError(Exception):
    """A non-OK status from the serving path.

    Attributes:
        code: the status code name, e.g. "INVALID_ARGUMENT".
        message: the error message, as the runtime wrote it.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code}: {self.message}"


# --- Paths --------------------------------------------------------------------


def _package_dir(name):
    # find_spec locates a package without importing it: the child process must
    # not import tensorflow (or tensorflow_text) Python code.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"Package {name!r} is not installed.")
    return list(spec.submodule_search_locations)[0]


def tensorflow_c_library():
    """Path of the shared library that exports the TensorFlow C API.

    In the TF 2.20 wheel that is `libtensorflow_cc.so.2` (`nm -D` shows
    `TF_LoadSessionFromSavedModel`, `TF_SessionRun`, `TF_LoadLibrary` there);
    it pulls in `libtensorflow_framework.so.2` (`TF_NewStatus`, tensors).
    """
    return os.path.join(_package_dir("tensorflow"), "libtensorflow_cc.so.2")


def tensorflow_text_op_libraries():
    """Paths of tensorflow-text's op libraries, the `.so` files to TF_LoadLibrary.

    Every op library under `tensorflow_text/python` (`ops/*.so` and
    `metrics/_text_similarity_metric_ops.so`): the `ops_lib` target that TF
    Serving's stock binary links (`model_servers/BUILD`) covers all of them.
    Found without importing tensorflow_text, for the child processes that
    must not import TensorFlow's Python code.
    """
    root = os.path.join(_package_dir("tensorflow_text"), "python")
    paths = []
    for directory, _, files in os.walk(root):
        paths += [os.path.join(directory, f) for f in files if f.endswith(".so")]
    return sorted(paths)


# --- The C API through ctypes ---------------------------------------------------


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("length", ctypes.c_size_t),
        ("data_deallocator", ctypes.c_void_p),
    ]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


_P = ctypes.c_void_p
_TSTRING_SIZE = 24  # sizeof(TF_TString) on 64-bit platforms.
_C_SIGNATURES = {
    # name: (restype, argtypes)
    "TF_NewStatus": (_P, []),
    "TF_DeleteStatus": (None, [_P]),
    "TF_GetCode": (ctypes.c_int, [_P]),
    "TF_Message": (ctypes.c_char_p, [_P]),
    "TF_LoadLibrary": (_P, [ctypes.c_char_p, _P]),
    "TF_GetOpList": (_Buffer, [_P]),
    "TF_DeleteLibraryHandle": (None, [_P]),
    "TF_GetAllOpList": (ctypes.POINTER(_Buffer), []),
    "TF_GetAllRegisteredKernels": (ctypes.POINTER(_Buffer), [_P]),
    "TF_DeleteBuffer": (None, [ctypes.POINTER(_Buffer)]),
    "TF_NewSessionOptions": (_P, []),
    "TF_DeleteSessionOptions": (None, [_P]),
    "TF_NewGraph": (_P, []),
    "TF_DeleteGraph": (None, [_P]),
    "TF_GraphOperationByName": (_P, [_P, ctypes.c_char_p]),
    "TF_LoadSessionFromSavedModel": (
        _P,
        [_P, _P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
        + [_P, _P, _P],
    ),
    "TF_SessionRun": (
        None,
        [_P, _P, ctypes.POINTER(_Output), ctypes.POINTER(_P), ctypes.c_int]
        + [ctypes.POINTER(_Output), ctypes.POINTER(_P), ctypes.c_int]
        + [ctypes.POINTER(_P), ctypes.c_int, _P, _P],
    ),
    "TF_CloseSession": (None, [_P, _P]),
    "TF_DeleteSession": (None, [_P, _P]),
    "TF_AllocateTensor": (
        _P,
        [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_size_t],
    ),
    "TF_DeleteTensor": (None, [_P]),
    "TF_TensorType": (ctypes.c_int, [_P]),
    "TF_NumDims": (ctypes.c_int, [_P]),
    "TF_Dim": (ctypes.c_int64, [_P, ctypes.c_int]),
    "TF_TensorData": (_P, [_P]),
    "TF_TensorByteSize": (ctypes.c_size_t, [_P]),
    "TF_StringInit": (None, [_P]),
    "TF_StringCopy": (None, [_P, ctypes.c_char_p, ctypes.c_size_t]),
    "TF_StringGetDataPointer": (_P, [_P]),
    "TF_StringGetSize": (ctypes.c_size_t, [_P]),
    "TF_StringDealloc": (None, [_P]),
}


@functools.cache
def _c_api():
    lib = ctypes.CDLL(tensorflow_c_library())
    for name, (restype, argtypes) in _C_SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class _Status:
    def __init__(self, lib):
        self._lib, self.handle = lib, lib.TF_NewStatus()

    def check(self):
        code = self._lib.TF_GetCode(self.handle)
        if code != 0:
            message = (self._lib.TF_Message(self.handle) or b"").decode(
                "utf-8", "replace"
            )
            raise ServingError(_code_name(code), message)

    def __del__(self):
        self._lib.TF_DeleteStatus(self.handle)


def _code_name(code):
    return STATUS_CODE_NAMES[code] if 0 <= code < len(STATUS_CODE_NAMES) else str(code)


@functools.cache
def _load_text_ops():
    """TF_LoadLibrary's each tensorflow-text op library; returns {path: ops}."""
    lib = _c_api()
    if not _IN_CHILD:
        # tensorflow_text builds its Python op wrappers from what its own
        # load_op_library call registers: import it first, so that it (not
        # this function) is the one that registers the ops in this process.
        import tensorflow_text  # noqa: F401
    op_lists = {}
    status = _Status(lib)
    for path in tensorflow_text_op_libraries():
        handle = lib.TF_LoadLibrary(path.encode(), status.handle)
        status.check()
        buffer = lib.TF_GetOpList(handle)
        op_lists[path] = ctypes.string_at(buffer.data, buffer.length)
        lib.TF_DeleteLibraryHandle(handle)
    return op_lists


def _to_tf_tensor(lib, array):
    """A new TF_Tensor holding `array`; string elements are TF_TStrings."""
    array = np.asarray(array)
    dims = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
    if array.dtype.kind in "USO":
        flat = [_as_bytes(value) for value in array.reshape(-1)]
        tensor = lib.TF_AllocateTensor(
            _TF_STRING, dims, array.ndim, _TSTRING_SIZE * len(flat)
        )
        data = lib.TF_TensorData(tensor)
        for i, value in enumerate(flat):
            lib.TF_StringInit(data + i * _TSTRING_SIZE)
            lib.TF_StringCopy(data + i * _TSTRING_SIZE, value, len(value))
        return tensor
    if array.dtype not in _TF_DTYPES:
        raise TypeError(f"No TensorFlow dtype for numpy dtype {array.dtype}.")
    array = np.ascontiguousarray(array)
    tensor = lib.TF_AllocateTensor(
        _TF_DTYPES[array.dtype], dims, array.ndim, array.nbytes
    )
    if array.nbytes:
        ctypes.memmove(lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor


def _as_bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"Expected bytes or str in a string tensor, got {value!r}.")


def _free_tf_tensor(lib, tensor):
    if lib.TF_TensorType(tensor) == _TF_STRING:
        data = lib.TF_TensorData(tensor)
        for i in range(lib.TF_TensorByteSize(tensor) // _TSTRING_SIZE):
            lib.TF_StringDealloc(data + i * _TSTRING_SIZE)
    lib.TF_DeleteTensor(tensor)


def _from_tf_tensor(lib, tensor):
    """A numpy copy of a TF_Tensor: strings become an object array of bytes."""
    shape = tuple(lib.TF_Dim(tensor, i) for i in range(lib.TF_NumDims(tensor)))
    dtype, data = lib.TF_TensorType(tensor), lib.TF_TensorData(tensor)
    if dtype == _TF_STRING:
        flat = np.empty(int(np.prod(shape)), dtype=object)
        for i in range(flat.size):
            element = data + i * _TSTRING_SIZE
            flat[i] = ctypes.string_at(
                lib.TF_StringGetDataPointer(element), lib.TF_StringGetSize(element)
            )
        return flat.reshape(shape)
    if dtype not in _NUMPY_DTYPES:
        raise ServingError("UNIMPLEMENTED", f"No numpy dtype for TF_DataType {dtype}.")
    size = lib.TF_TensorByteSize(tensor)
    raw = ctypes.string_at(data, size) if size else b""
    return np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype]).reshape(shape).copy()


class CApiSavedModel:
    """A SavedModel loaded by `TF_LoadSessionFromSavedModel`, in this process.

    Loads the tensorflow-text op libraries first (TF Serving links them).
    Use it as a context manager, or call `close()`.

    Args:
        export_dir: the SavedModel directory.
        tags: the MetaGraph's tag set; TF Serving loads `("serve",)`.
    """

    def __init__(self, export_dir, tags=(SERVE_TAG,)):
        self._lib = lib = _c_api()
        _load_text_ops()
        status = _Status(lib)
        options, self._graph = lib.TF_NewSessionOptions(), lib.TF_NewGraph()
        tag_array = (ctypes.c_char_p * len(tags))(*[t.encode() for t in tags])
        self._session = lib.TF_LoadSessionFromSavedModel(
            options, None, os.fspath(export_dir).encode(), tag_array, len(tags),
            self._graph, None, status.handle,
        )  # fmt: skip
        lib.TF_DeleteSessionOptions(options)
        try:
            status.check()
        except ServingError:
            lib.TF_DeleteGraph(self._graph)
            self._session = None
            raise

    def _output(self, tensor_name):
        op_name, _, index = tensor_name.partition(":")
        operation = self._lib.TF_GraphOperationByName(self._graph, op_name.encode())
        if not operation:
            raise ServingError(
                "NOT_FOUND", f"Tensor {tensor_name} is not in the loaded graph."
            )
        return _Output(operation, int(index or 0))

    def run(self, feeds, fetches):
        """Runs the session.

        Args:
            feeds: dict of tensor name ("op:0") to numpy array.
            fetches: list of tensor names.

        Returns:
            list of numpy arrays, one per fetch.
        """
        lib, status = self._lib, _Status(self._lib)
        inputs = (_Output * len(feeds))(*[self._output(n) for n in feeds])
        outputs = (_Output * len(fetches))(*[self._output(n) for n in fetches])
        input_values = (_P * len(feeds))()
        output_values = (_P * len(fetches))()
        try:
            for i, array in enumerate(feeds.values()):
                input_values[i] = _to_tf_tensor(lib, array)
            lib.TF_SessionRun(
                self._session, None, inputs, input_values, len(feeds),
                outputs, output_values, len(fetches), None, 0, None, status.handle,
            )  # fmt: skip
            status.check()
            return [_from_tf_tensor(lib, t) for t in output_values]
        finally:
            for tensor in output_values:
                if tensor:
                    lib.TF_DeleteTensor(tensor)
            for tensor in input_values:
                if tensor:
                    _free_tf_tensor(lib, tensor)

    def close(self):
        if self._session:
            status = _Status(self._lib)
            self._lib.TF_CloseSession(self._session, status.handle)
            self._lib.TF_DeleteSession(self._session, status.handle)
            self._lib.TF_DeleteGraph(self._graph)
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# --- Signatures and requests ---------------------------------------------------


def _read_meta_graph(export_dir, tags=(SERVE_TAG,)):
    """The MetaGraphDef whose tag set is `tags`, as the loader picks it."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    path = os.path.join(export_dir, "saved_model.pb")
    if os.path.exists(path):
        with open(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:  # The loader also reads the text form.
        with open(path + "txt") as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(
        "NOT_FOUND",
        f"No MetaGraph with tags {sorted(tags)} in {export_dir}; found {found}.",
    )


def _prepare_request(signature_def_map, signature_name, inputs):
    """Checks a request as predict_util.cc does; returns (feeds, aliases, names)."""
    if signature_name not in signature_def_map:
        raise ServingError(
            "FAILED_PRECONDITION",
            f'Serving signature key "{signature_name}" not found.',
        )
    signature = signature_def_map[signature_name]
    expected = sorted(signature.inputs)
    if len(inputs) != len(signature.inputs):
        sent = sorted(inputs)
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}.",
        )
    feeds = {}
    for alias, value in inputs.items():
        if alias not in signature.inputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input tensor alias not found in signature: {alias}. Inputs "
                f"expected to be in the set {{{','.join(expected)}}}.",
            )
        feeds[signature.inputs[alias].name] = np.asarray(value)
    aliases = list(signature.outputs)
    return feeds, aliases, [signature.outputs[a].name for a in aliases]


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
    signatures = _read_meta_graph(export_dir).signature_def
    feeds, aliases, fetches = _prepare_request(signatures, signature_name, inputs)
    if isolated:
        outputs = _run_in_child(export_dir, feeds, fetches)
    else:
        with CApiSavedModel(export_dir) as model:
            outputs = model.run(feeds, fetches)
    return dict(zip(aliases, outputs, strict=True))


def _child_command(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    command = [sys.executable, "-m", "serving.fidelity", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )


def _run_in_child(export_dir, feeds, fetches):
    with tempfile.TemporaryDirectory(prefix="tf_switch_fidelity_") as directory:
        request = {"export_dir": export_dir, "feeds": list(feeds), "fetches": fetches}
        with open(os.path.join(directory, "request.json"), "w") as f:
            json.dump(request, f)
        arrays = {f"input_{i}": array for i, array in enumerate(feeds.values())}
        np.savez(os.path.join(directory, "inputs.npz"), **arrays)
        _child_command("run", directory)
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
            raise ServingError(_code_name(error.error_code), error.message) from error
        signatures = meta_graph.signature_def
        feeds, aliases, fetches = _prepare_request(signatures, signature_name, inputs)
        _check_dtypes(signatures[signature_name], feeds)
        try:
            outputs = sess.run(fetches, feeds)
        except tf.errors.OpError as error:
            raise ServingError(_code_name(error.error_code), error.message) from error
    return {
        alias: np.asarray(value) for alias, value in zip(aliases, outputs, strict=True)
    }


# --- The op allow-list ----------------------------------------------------------


def graph_ops(export_dir):
    """Op types in the "serve" MetaGraph: its graph and every library function.

    A node whose op is the name of a library function (a direct function
    call) counts through that function's own nodes, not as an op type.
    """
    graph_def = _read_meta_graph(os.fspath(export_dir)).graph_def
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
        _child_command("op-registry", directory)
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


def _child_op_registry(directory):
    lib = _c_api()
    files = {"core_ops": "core_ops.pb", "text_ops": {}, "kernels": "kernels.pb"}
    core = lib.TF_GetAllOpList()
    with open(os.path.join(directory, files["core_ops"]), "wb") as f:
        f.write(ctypes.string_at(core.contents.data, core.contents.length))
    lib.TF_DeleteBuffer(core)
    for i, (path, op_list) in enumerate(_load_text_ops().items()):
        files["text_ops"][path] = f"text_ops_{i}.pb"
        with open(os.path.join(directory, f"text_ops_{i}.pb"), "wb") as f:
            f.write(op_list)
    status = _Status(lib)
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


def signature_lint(export_dir):
    """Problems TF Serving's predict API would have with the signatures.

    Checks: a "serve" MetaGraph exists; "serving_default" is present; every
    signature's method_name is "tensorflow/serving/predict"; every input and
    output dtype is one the REST JSON codec reads (no bfloat16, half, ...);
    every output has a batch dimension (rank >= 1, dim 0 unknown or equal to
    the inputs' fixed batch size), which the row ("instances") format needs.

    Returns:
        list of human-readable problem strings; empty when there are none.
    """
    from tensorflow.core.framework import types_pb2

    try:
        signatures = _read_meta_graph(os.fspath(export_dir)).signature_def
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
        if signature.method_name != PREDICT_METHOD_NAME:
            problems.append(
                f'{where}: method_name is "{signature.method_name}", expected '
                f'"{PREDICT_METHOD_NAME}".'
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


# --- Command line ---------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.fidelity")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="lint an export and its ops")
    check.add_argument("export_dir")
    # The two below are this module's child processes: no tensorflow import.
    commands.add_parser("run").add_argument("directory")
    commands.add_parser("op-registry").add_argument("directory")
    args = parser.parse_args(argv)
    global _IN_CHILD
    _IN_CHILD = args.command in ("run", "op-registry")
    if args.command == "run":
        _child_run(args.directory)
        return 0
    if args.command == "op-registry":
        _child_op_registry(args.directory)
        return 0
    problems = signature_lint(args.export_dir)
    registry = serving_op_registry()
    registered = set(registry["core_ops"]).union(*registry["text_ops"].values())
    for op in sorted(disallowed_ops(args.export_dir)):
        why = "has no CPU kernel" if op in registered else "is not registered"
        problems.append(f"Op {op} {why} in TF Serving (TF core + tensorflow-text).")
    print("\n".join(problems) if problems else f"{args.export_dir}: no problems.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
