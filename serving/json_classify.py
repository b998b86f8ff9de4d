"""TF Serving's REST JSON for `:classify` (`util/json_tensor.cc`), in Python.

`parse_classify(body)` is `FillClassificationRequestFromJson`: the body

    {"signature_name": "classify",                      (optional)
     "context": {"country": "fr"},                      (optional)
     "examples": [{"x": 1.5, "tags": ["a", "b"]}, {"x": 0.5}]}

becomes a `ClassificationRequest` whose input is an `example_list`, or an
`example_list_with_context` when "context" is there. Each JSON object is a
`tf.Example` (`MakeExampleFromJsonObject`): a key is a feature, its value
one element or a list of them, and the elements' JSON types choose the
feature's kind (`AddValueToFeature`):

- an integer: `int64_list` (one past int64 but within uint64: "Only
  int64_t is supported"; past uint64 rapidjson reads a double),
- a number with a fraction or exponent, `NaN`, `Infinity`: `float_list`
  (1 is an int64, 1.0 a float; one list cannot mix them),
- `true` / `false`: `int64_list` 1 / 0,
- a string: `bytes_list` (its UTF-8), `{"b64": "..."}`: `bytes_list` (the
  decoded bytes),
- `null`, a nested list, any other object: INVALID_ARGUMENT,
- `[]`: a feature with no kind.

A key repeated within one example is read every time and the last one is
kept (json_tensor.cc iterates over the members into a map); elsewhere the
first counts, as everywhere in `serving.json_parse`.

`classification_pieces(result)` is `MakeJsonFromClassificationResult`:
`{"results": [[["label", score], ...], ...]}`, one list of (label, score)
pairs per example, scores written as `WriteDecimal<float>` writes them
(`float32_text`: six significant digits when they read back as the same
float32, else nine; "NaN", "Infinity").
"""

import base64
import binascii
import json

import numpy as np

from .json_parse import members, parse_json
from .status import invalid

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64_MAX = (1 << 64) - 1
_DEBUG_CHARS = 256  # kMaxJsonDebugStringBytes
_BLOCK_VALUES = 1 << 16


def json_type(value):
    """rapidjson's name of a JSON value's type (`JsonTypeString`)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _debug_string(value):
    """A JSON value for an error message, cut after 256 characters
    (`JsonValueToDebugString`)."""
    text = json.dumps(value)
    return text if len(text) <= _DEBUG_CHARS else text[:_DEBUG_CHARS] + "..."


def _format_error(doc, message):
    return invalid(f"JSON Value: {_debug_string(doc)} {message}")


def _is_b64(value):
    """`IsValBase64Object`: an object whose one member is "b64": string."""
    if not isinstance(value, dict):
        return False
    pairs = members(value)
    return len(pairs) == 1 and pairs[0][0] == "b64" and isinstance(pairs[0][1], str)


def _unexpected(name, value):
    return invalid(
        f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
    )


def _kind_of(value, name):
    """The feature kind a JSON element belongs to: bytes, float or int64."""
    if value is None or isinstance(value, list):
        raise _unexpected(name, value)
    if isinstance(value, bool):
        return "int64"
    if isinstance(value, dict):
        if not _is_b64(value):
            raise _unexpected(name, value)
        return "bytes"
    if isinstance(value, str):
        return "bytes"
    if isinstance(value, float):
        return "float"
    if _INT64[0] <= value <= _INT64[1] or 0 < value <= _UINT64_MAX:
        return "int64"
    return "float"  # rapidjson reads an integer past 64 bits as a double


def _element(value, kind, name):
    """The element as its feature kind stores it."""
    if kind == "bytes":
        if isinstance(value, str):
            return value.encode("utf-8")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(
                f"Unable to base64 decode (feature {name}: {value['b64'][:40]!r})"
            ) from None
    if kind == "float":
        return float(value)
    if value > _INT64[1]:
        raise invalid(
            f"Feature: {name} has uint64_t element. Only int64_t is supported."
        )
    return int(value)


def _feature(name, content):
    """(kind or None, elements) of one feature's JSON value."""
    kind, elements = None, []
    for value in content if isinstance(content, list) else [content]:
        found = _kind_of(value, name)
        if kind is not None and found != kind:
            raise invalid(
                f"Unexpected element type in feature: {name} expecting type: {kind}"
            )
        kind = found
        elements.append(_element(value, kind, name))
    return kind, elements


def fill_example(value, example):
    """Fills a `tf.train.Example` from a JSON object (`MakeExampleFromJsonObject`)."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    features = {}
    for name, content in members(value):
        features[name] = _feature(name, content)  # a repeated key: the last wins
    for name, (kind, elements) in features.items():
        feature = example.features.feature[name]
        if kind == "bytes":
            feature.bytes_list.value.extend(elements)
        elif kind == "float":
            feature.float_list.value.extend(elements)
        elif kind == "int64":
            feature.int64_list.value.extend(elements)
    return example


def parse_classify(body):
    """The `ClassificationRequest` of a `:classify` body; its model_spec has
    the signature name only (the server fills in the rest)."""
    from tensorflow_serving.apis import classification_pb2

    doc = parse_json(body)
    request = classification_pb2.ClassificationRequest()
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise _format_error(
                doc,
                "not formatted correctly. 'signature_name' key must be a string value.",
            )
        request.model_spec.signature_name = doc["signature_name"]
    has_context = "context" in doc
    if has_context:
        with_context = request.input.example_list_with_context
        with_context.context.SetInParent()
        fill_example(doc["context"], with_context.context)
    if "examples" not in doc:
        raise _format_error(
            doc, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    if has_context:
        target = request.input.example_list_with_context.examples
    else:
        target = request.input.example_list.examples
    for value in examples:
        fill_example(value, target.add())
    return request


def float32_text(value):
    """A float32 as TF Serving writes it (`WriteDecimal<float>`)."""
    value = np.float32(value)
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"  # absl::StrCat: six significant digits
    if np.float32(float(text)) != value:
        text = f"{float(value):.9g}"  # max_digits10 of a float
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def classification_pieces(result):
    """`{"results": ...}` of a `serving.classify.Classification`, as bytes
    pieces (in blocks of about 64k classes)."""
    num_examples, num_classes = result.shape
    if num_examples == 0:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    labels, scores = result.labels(), result.score_values()
    step = max(1, _BLOCK_VALUES // max(1, num_classes))
    pieces = [b'{"results": [']
    for start in range(0, num_examples, step):
        rows = []
        for row in range(start, min(num_examples, start + step)):
            pairs = ", ".join(
                f"[{json.dumps(label)}, {float32_text(score)}]"
                for label, score in zip(labels[row], scores[row], strict=True)
            )
            rows.append(f"[{pairs}]")
        block = ", ".join(rows).encode("utf-8")
        pieces.append(b", " + block if start else block)
    pieces.append(b"]}")
    return pieces
