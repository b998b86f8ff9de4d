"""TF Serving's REST JSON codec (`util/json_tensor.cc`), in Python.

- `parse_predict(body, loaded)`: a `:predict` body as (signature name, numpy
  inputs, row format?): row (`instances`) or columnar (`inputs`) format,
  `{"b64": ...}` strings, strict typing (an int32 input given 1.5, true, "7"
  or 2**40 is INVALID_ARGUMENT, never a cast), no ragged rows.
- `format_outputs(outputs, row_format)`: `{"predictions": ...}` or
  `{"outputs": ...}`; string outputs whose name ends in `_bytes`, and strings
  that are not UTF-8, as `{"b64": ...}`.
- `status_json`, `metadata_json`: the bodies of `GET /v1/models/NAME` and
  `GET .../metadata`.

The body is read as rapidjson reads it (`serving.json_parse`).
"""

import base64
import binascii
import json
import math

import numpy as np

from .json_parse import MAX_DEPTH, parse_json
from .saved_model import DEFAULT_SIGNATURE
from .status import ServingError, invalid

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}
_FLOAT_DTYPES = frozenset(["float32", "float64"])


# --- JSON -> tensors --------------------------------------------------------------


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _shape(value, where, depth=0):
    """Shape of a nested list of scalars; a 400 if it is ragged or too deep."""
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise invalid(
                f"{where}: lists nested deeper than {MAX_DEPTH} levels; a tensor "
                f"has at most {MAX_DEPTH} dimensions."
            )
        if not value:
            return (0,)
        shapes = {_shape(item, where, depth + 1) for item in value}
        if len(shapes) != 1:
            raise invalid(
                f"{where}: the nested lists are ragged (their lengths differ); "
                "every list at one depth must have the same length."
            )
        return (len(value), *shapes.pop())
    if isinstance(value, dict) and not _is_b64(value):
        raise invalid(f"{where}: expected a value or list, got a JSON object.")
    return ()


def _scalar(value, dtype, where):
    if dtype == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value) and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"{where}: invalid base64 in {{'b64': ...}}.") from None
        raise invalid(
            f"{where}: expects a string (or {{'b64': ...}}), got {json.dumps(value)}."
        )
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise invalid(f"{where}: expects a bool, got {json.dumps(value)}.")
    if dtype in _INT_RANGES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(
                f"{where}: expects {dtype}, got {json.dumps(value)}; "
                "send JSON integers (no decimals, booleans or strings)."
            )
        low, high = _INT_RANGES[dtype]
        if not low <= value <= high:
            raise invalid(f"{where}: {value} is out of range for {dtype}.")
        return value
    if dtype in _FLOAT_DTYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"{where}: expects {dtype}, got {json.dumps(value)}.")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise invalid(
                f"{where}: an integer of {len(str(value))} digits is out of "
                f"range for {dtype}."
            ) from None
        if dtype == "float32" and math.isfinite(number) and abs(number) > 3.4028235e38:
            raise invalid(f"{where}: {number:g} is out of range for float32.")
        return number
    raise ServingError("UNIMPLEMENTED", f"{where}: dtype {dtype} is not supported.")


def _flatten(value, out):
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def to_array(value, dtype, where):
    """A JSON value as a numpy array of the signature's dtype, checked strictly."""
    shape = _shape(value, where)
    flat = []
    _flatten(value, flat)
    items = [_scalar(item, dtype, where) for item in flat]
    if dtype == "string":
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        array = np.array(items, dtype=np.dtype(dtype))
    return array.reshape(shape)


def parse_predict(body, loaded):
    """(signature_name, numpy inputs, row_format) of a predict request body."""
    request = parse_json(body)
    signature_name = request.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise invalid("'signature_name' key must be a string value.")
    if signature_name not in loaded.signature_defs:
        raise invalid(
            f'Serving signature name: "{signature_name}" not found in signature def'
        )
    dtypes = loaded.input_dtypes(signature_name)
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise invalid(
            "Missing 'inputs' or 'instances' key"
            if not has_rows
            else "Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys exists"
        )
    if has_rows:
        return signature_name, _parse_rows(request["instances"], dtypes), True
    return signature_name, _parse_columns(request["inputs"], dtypes), False


def _check_names(names, dtypes):
    expected = sorted(dtypes)
    if sorted(names) != expected:
        extra = sorted(set(names) - set(expected))
        missing = sorted(set(expected) - set(names))
        raise invalid(
            f"input names do not match the signature: expected {expected}; "
            f"unknown {extra}; missing {missing}."
        )


def _parse_rows(instances, dtypes):
    if not isinstance(instances, list):
        raise invalid("'instances' must be a JSON list.")
    if not instances:
        raise invalid("'instances' must be a non-empty list.")
    named = all(isinstance(row, dict) and not _is_b64(row) for row in instances)
    if not named:
        if any(isinstance(row, dict) and not _is_b64(row) for row in instances):
            raise invalid("'instances' mixes JSON objects and plain values.")
        if len(dtypes) != 1:
            raise invalid(
                f"the signature has {len(dtypes)} inputs {sorted(dtypes)}: every "
                "instance must be a JSON object with those keys."
            )
        (name,) = dtypes
        return {name: to_array(instances, dtypes[name], f"input '{name}'")}
    for row in instances:
        _check_names(list(row), dtypes)
    inputs = {}
    for name, dtype in dtypes.items():
        inputs[name] = to_array([row[name] for row in instances], dtype, f"'{name}'")
    return inputs


def _parse_columns(columns, dtypes):
    if isinstance(columns, dict) and not _is_b64(columns):
        _check_names(list(columns), dtypes)
        return {
            name: to_array(columns[name], dtype, f"input '{name}'")
            for name, dtype in dtypes.items()
        }
    if len(dtypes) != 1:
        raise invalid(
            f"the signature has {len(dtypes)} inputs {sorted(dtypes)}: 'inputs' "
            "must be a JSON object with those keys."
        )
    (name,) = dtypes
    return {name: to_array(columns, dtypes[name], f"input '{name}'")}


# --- tensors -> JSON --------------------------------------------------------------


def jsonable(array, as_bytes):
    """`array` as nested lists of JSON values (strings: UTF-8 text, or
    `{"b64": ...}` when `as_bytes` or not UTF-8)."""
    array = np.asarray(array)
    if array.dtype.kind in "SOU":

        def encode(value):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not as_bytes:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}

        if array.ndim == 0:
            return encode(array.item())
        if array.size == 0:
            return array.tolist()
        return np.vectorize(encode, otypes=[object])(array).tolist()
    return array.tolist()


def check_row_outputs(arrays):
    """The batch size the row format needs; 400 if an output has none or
    the outputs disagree (json_tensor.cc MakeJsonFromTensors)."""
    sizes = set()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise invalid(
            "Tensor name: outputs have inconsistent batch sizes "
            f"{sorted(sizes)}; the row format needs one."
        )
    return sizes.pop()


def format_outputs(outputs, row_format):
    """The answer as one JSON value (`serving.responses.json_pieces` encodes
    the same in pieces, within a budget)."""
    names = sorted(outputs)
    values = {
        name: jsonable(np.asarray(outputs[name]), name.endswith("_bytes"))
        for name in names
    }
    if not row_format:
        if len(names) == 1:
            return {"outputs": values[names[0]]}
        return {"outputs": values}
    size = check_row_outputs(outputs)
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {
        "predictions": [{name: values[name][i] for name in names} for i in range(size)]
    }


# --- Status and metadata ----------------------------------------------------------


def status_json(statuses):
    """`GetModelStatusResponse` JSON of [(version, state, code, message)]."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": state,
                "status": {"error_code": code, "error_message": message},
            }
            for version, state, code, message in statuses
        ]
    }


def metadata_json(model_name, loaded):
    """`GetModelMetadataResponse` JSON: model spec and signature defs."""
    from google.protobuf import json_format

    return {
        "model_spec": {
            "name": model_name,
            "signature_name": "",
            "version": str(loaded.version),
        },
        "metadata": {
            "signature_def": json_format.MessageToDict(
                loaded.signature_def_map(), preserving_proto_field_name=True
            )
        },
    }
