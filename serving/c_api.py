"""TensorFlow's C API through ctypes: the loader TF Serving runs, in Python.

`CApiSavedModel(export_dir)` loads a SavedModel with
`TF_LoadSessionFromSavedModel` from the wheel's `libtensorflow_cc.so.2`
(`tensorflow::LoadSavedModel`, the loader TF Serving calls: restore, init op,
op registration) and runs it with `TF_SessionRun` (its `Session::Run`). The
tensorflow-text op libraries are `TF_LoadLibrary`'d first: TF Serving's stock
binary links them.

Nothing here imports TensorFlow's Python package: `serving.fidelity` runs
this module in child processes that hold only the C++ runtime, like the
server (`child_command`). Set `IN_CHILD = True` in such a process.
"""

import ctypes
import functools
import importlib.util
import os
import subprocess
import sys

import numpy as np

from .status import ServingError, code_name

# True in serving.fidelity's child processes, which never import TF's Python code.
IN_CHILD = False

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
def library():
    lib = ctypes.CDLL(tensorflow_c_library())
    for name, (restype, argtypes) in _C_SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class TFStatus:
    """A TF_Status; `check()` raises its non-OK status as a `ServingError`."""

    def __init__(self, lib):
        self._lib, self.handle = lib, lib.TF_NewStatus()

    def check(self):
        code = self._lib.TF_GetCode(self.handle)
        if code != 0:
            message = (self._lib.TF_Message(self.handle) or b"").decode(
                "utf-8", "replace"
            )
            raise ServingError(code_name(code), message)

    def __del__(self):
        self._lib.TF_DeleteStatus(self.handle)


@functools.cache
def load_text_ops():
    """TF_LoadLibrary's each tensorflow-text op library; returns {path: ops}."""
    lib = library()
    if not IN_CHILD:
        # tensorflow_text builds its Python op wrappers from what its own
        # load_op_library call registers: import it first, so that it (not
        # this function) is the one that registers the ops in this process.
        import tensorflow_text  # noqa: F401
    op_lists = {}
    status = TFStatus(lib)
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

    def __init__(self, export_dir, tags=("serve",)):
        self._lib = lib = library()
        load_text_ops()
        status = TFStatus(lib)
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
        lib, status = self._lib, TFStatus(self._lib)
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
            status = TFStatus(self._lib)
            self._lib.TF_CloseSession(self._session, status.handle)
            self._lib.TF_DeleteSession(self._session, status.handle)
            self._lib.TF_DeleteGraph(self._graph)
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def child_command(*args):
    """Runs `python -m serving.fidelity ARGS` in a child process; raises on failure."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    command = [sys.executable, "-m", f"{__package__}.fidelity", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )
