"""How big an answer may get: the response budget, and JSON encoded in pieces.

TF Serving encodes whatever a signature returns (json_tensor.cc builds the
whole JSON text in memory; gRPC allows messages up to INT32_MAX, server.cc
`SetMaxMessageSize`), so a small request for full logits can make a huge
answer: 256 rows x 64 tokens of a 1,957-token vocabulary is 32 M floats,
about 650 MB of JSON. Here every answer has a budget, `max_response_bytes`
(`--max_response_bytes`, default 16 MiB), the same number for REST (bytes
of JSON) and gRPC (bytes of `TensorProto`s), checked twice:

- before the model runs, from the signature: each output's shape with an
  open dimension (-1) taken from the inputs' same dimension (batch, then
  length: how every tf-switch signature is shaped), so a request whose
  answer cannot fit is refused before it costs any compute;
- after it runs, from the real output shapes, before any encoding.

A value counts at its widest: JSON float32 25 bytes (Python's repr of the
value as a double, as "-1.1754943508222875e-38", and ", "), float64 26,
int32 13, int64 22, bool 7, strings 6 bytes per byte (escapes) plus 16; list
brackets and row keys on top. Real logits average about 20 bytes, so the
limit errs on the safe side by about a fifth. gRPC counts each value's item
size. A refusal is INVALID_ARGUMENT (400): the request must change, and a
retry would not help.

`json_pieces(outputs, row_format)` encodes `{"predictions": ...}` /
`{"outputs": ...}` in blocks of about 64k values, so the encoder's peak
memory is the JSON text plus one block, not a Python list of every value.
"""

import json

import numpy as np

from .json_codec import check_row_outputs, jsonable
from .status import invalid

DEFAULT_MAX_RESPONSE_BYTES = 16 << 20
_BLOCK_VALUES = 1 << 16
_OVERHEAD = 64  # '{"predictions": [' ... ']}' and the like

# Widest JSON text of one value, with its ", " separator.
JSON_WIDTH = {
    "float16": 25,
    "float32": 25,
    "float64": 26,
    "bool": 7,
    "int8": 6,
    "int16": 8,
    "int32": 13,
    "int64": 22,
    "uint8": 5,
    "uint16": 7,
    "uint32": 12,
    "uint64": 22,
}
_STRING_MIN = 4  # '"", '


def _width(dtype_name, encoding):
    """Bytes per value of a numeric dtype (None for strings)."""
    if dtype_name in ("string", "object") or dtype_name.startswith(("bytes", "str")):
        return None
    if encoding == "json":
        return JSON_WIDTH.get(dtype_name, 26)
    return np.dtype(dtype_name).itemsize


def _lists(shape):
    """How many JSON lists a nested list of `shape` has."""
    count, product = 0, 1
    for size in shape:
        count += product
        product *= size
    return count


def _size(name, shape, dtype_name, encoding, row_format, strings=None):
    elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    width = _width(dtype_name, encoding)
    if width is None:
        if strings is None:
            data = elements * _STRING_MIN
        elif encoding == "json":
            data = sum(6 * len(s) + 16 for s in strings)
        else:
            data = sum(len(s) + 6 for s in strings)
    else:
        data = elements * width
    if encoding != "json":
        return data + len(name) + 16
    rows = shape[0] if (row_format and shape) else 0
    return data + 2 * _lists(shape) + rows * (len(name) + 6) + len(name) + 6


def _describe(sizes):
    largest = sorted(sizes, key=lambda item: -item[0])[:3]
    return ", ".join(f"{n} {list(shape)} {dtype}" for _, n, shape, dtype in largest)


class ResponseBudget:
    """The largest answer a server sends (`max_bytes`; None: no limit).

    Args:
        max_bytes: the budget in bytes.
        encoding: "json" (REST) or "proto" (gRPC).
    """

    def __init__(self, max_bytes=DEFAULT_MAX_RESPONSE_BYTES, encoding="json"):
        if encoding not in ("json", "proto"):
            raise ValueError(f"Unknown encoding {encoding!r}.")
        self.max_bytes = max_bytes
        self.encoding = encoding

    def check_sizes(self, sizes, loaded, when, advice=None, kind=None):
        """INVALID_ARGUMENT if `sizes`, [(bytes, name, shape, dtype)], add up
        to more than the budget; `when` says what was spared, `advice` what
        to change (default: a predict request's), `kind` what was counted."""
        total = sum(size for size, *_ in sizes) + _OVERHEAD
        if self.max_bytes is None or total <= self.max_bytes:
            return
        if kind is None:
            kind = "JSON" if self.encoding == "json" else "TensorProto data"
        if advice is None:
            advice = (
                "Send fewer rows or tokens, or use a signature with smaller outputs."
            )
            if loaded is not None and "next_token" in loaded.signature_defs:
                advice += (
                    " The `next_token` signature answers each row's next token and "
                    "top log-probabilities instead of every logit."
                )
        raise invalid(
            f"The response would take up to {total} bytes of {kind} "
            f"({_describe(sizes)}), over this server's limit of {self.max_bytes} "
            f"bytes (--max_response_bytes); {when} {advice}"
        )

    def check_before_run(
        self, loaded, signature_name, inputs, row_format=False, output_names=None
    ):
        """INVALID_ARGUMENT if the signature's outputs (or `output_names` of
        them) for these inputs cannot fit, predicted from the signature's
        shapes (open dimensions taken from the inputs' same dimension)."""
        import tensorflow as tf

        signature = loaded.signature_defs[signature_name]
        input_dims = {}
        for name, value in inputs.items():
            spec = signature.inputs[name].tensor_shape
            shape = np.shape(value)
            if not spec.unknown_rank and len(spec.dim) != len(shape):
                continue  # a wrong rank: the run refuses it with its own message
            for axis, size in enumerate(shape):
                if spec.unknown_rank or spec.dim[axis].size == -1:
                    input_dims[axis] = max(input_dims.get(axis, 0), size)
        sizes = []
        for name, info in sorted(signature.outputs.items()):
            if output_names is not None and name not in output_names:
                continue
            if info.tensor_shape.unknown_rank:
                continue
            shape = [
                dim.size if dim.size >= 0 else input_dims.get(axis, 1)
                for axis, dim in enumerate(info.tensor_shape.dim)
            ]
            dtype = tf.as_dtype(info.dtype).name
            size = _size(name, shape, dtype, self.encoding, row_format)
            sizes.append((size, name, shape, dtype))
        self.check_sizes(sizes, loaded, "the request was not run.")

    def check_outputs(self, outputs, loaded=None, row_format=False):
        """INVALID_ARGUMENT if these outputs (numpy arrays) do not fit."""
        self.check_sizes(
            self._output_sizes(outputs, row_format), loaded, "nothing was encoded."
        )

    def estimate(self, outputs, row_format=False):
        """The bytes these outputs count for (at least what they encode to)."""
        return (
            sum(size for size, *_ in self._output_sizes(outputs, row_format))
            + _OVERHEAD
        )

    def _output_sizes(self, outputs, row_format):
        sizes = []
        for name, value in sorted(outputs.items()):
            array = np.asarray(value)
            strings = array.ravel() if array.dtype.kind in "SOU" else None
            if strings is not None:
                strings = [s.encode() if isinstance(s, str) else s for s in strings]
            dtype = "string" if strings is not None else array.dtype.name
            size = _size(name, array.shape, dtype, self.encoding, row_format, strings)
            sizes.append((size, name, array.shape, dtype))
        return sizes


def _blocks(array, as_bytes):
    """JSON texts of `array`'s items along axis 0, in blocks, ", "-joined."""
    per_row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_VALUES // per_row)
    for start in range(0, array.shape[0], step):
        text = json.dumps(jsonable(array[start : start + step], as_bytes))
        yield text[1:-1].encode("utf-8")


def _array_pieces(array, as_bytes):
    if array.ndim == 0:
        return [json.dumps(jsonable(array, as_bytes)).encode("utf-8")]
    pieces = [b"["]
    for index, block in enumerate(_blocks(array, as_bytes)):
        pieces.append(b", " + block if index else block)
    pieces.append(b"]")
    return pieces


def json_pieces(outputs, row_format):
    """The JSON answer to a predict request, as a list of bytes pieces.

    Same text as `json.dumps(json_codec.format_outputs(outputs, row_format))`.
    """
    names = sorted(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    if len(names) == 1 and not row_format:
        return [b'{"outputs": ', *_array_pieces(arrays[names[0]], _b(names[0])), b"}"]
    if not row_format:
        pieces = [b'{"outputs": {']
        for index, name in enumerate(names):
            key = json.dumps(name).encode("utf-8") + b": "
            pieces += [b", " + key if index else key]
            pieces += _array_pieces(arrays[name], _b(name))
        return pieces + [b"}}"]
    size = check_row_outputs(arrays)
    if len(names) == 1:
        only = _array_pieces(arrays[names[0]], _b(names[0]))
        return [b'{"predictions": ', *only, b"}"]
    per_row = max(
        1, sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays.values())
    )
    step = max(1, _BLOCK_VALUES // per_row)
    pieces = [b'{"predictions": [']
    for start in range(0, size, step):
        columns = {
            name: jsonable(arrays[name][start : start + step], _b(name))
            for name in names
        }
        rows = [
            {name: columns[name][i] for name in names}
            for i in range(min(step, size - start))
        ]
        block = json.dumps(rows)[1:-1].encode("utf-8")
        pieces.append(b", " + block if start else block)
    return pieces + [b"]}"]


def _b(name):
    """String outputs named `*_bytes` are always `{"b64": ...}`."""
    return name.endswith("_bytes")
