"""A request body as TF Serving's rapidjson reads it (`util/json_tensor.cc`).

`parse_json(body)` is the JSON object of a body, or INVALID_ARGUMENT with a
"JSON Parse error: ..." message. It follows rapidjson as json_tensor.cc
calls it (`kParseNanAndInfFlag`, an `EncodedInputStream<UTF8>`): a UTF-8
byte order mark before the document is skipped, `NaN` and `Infinity` are
numbers, a number beyond a double (`1e999`, a 400-digit integer) is
"Number too big to be stored in double", a lone UTF-16 surrogate escape
(`"\\ud800"`) is "The surrogate pair in string is invalid", and of
duplicate keys the first counts (rapidjson's `FindMember` returns the
first match). Objects are `JsonObject`s: where a key repeats, `members(obj)`
still gives every member in document order, for the readers that iterate
over an object as json_tensor.cc does (a tf.Example's features).

Where this is stricter than TF Serving, on purpose: the body must be UTF-8
(RFC 8259; rapidjson would pass invalid bytes into a string tensor), JSON
nesting is bounded (`MAX_DEPTH`; json_tensor.cc has a TODO about deep
nesting overflowing its recursive parser), and text after the document is
refused (rapidjson's `kParseStopWhenDoneFlag` ignores it). All are a 400.
"""

import json
import math
import re
import sys

from .status import invalid

# TensorShape's maximum rank; deeper JSON lists cannot be a tensor.
MAX_DEPTH = 254
_UTF8_BOM = b"\xef\xbb\xbf"
# A \uD800-\uDFFF escape: the only way a JSON text holds a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_MAX_DOUBLE_INT = int(sys.float_info.max)


def _too_big(text):
    shown = text if len(text) <= 40 else text[:20] + "..." + text[-10:]
    return invalid(f"JSON Parse error: Number too big to be stored in double: {shown}")


def _parse_float(text):
    number = float(text)
    if math.isinf(number):  # rapidjson: kParseErrorNumberTooBig
        raise _too_big(text)
    return number


def _parse_int(text):
    # rapidjson keeps integers that fit 64 bits and stores larger ones as
    # doubles, so an integer is too big only past DBL_MAX (309 digits).
    if len(text.lstrip("-")) > 309 or abs(int(text)) > _MAX_DOUBLE_INT:
        raise _too_big(text)
    return int(text)


class JsonObject(dict):
    """A JSON object as `FindMember` reads it: the first of duplicate keys.

    `pairs` is None, or every (key, value) in document order when a key
    repeats (what iterating over a rapidjson object visits).
    """

    pairs = None


def members(obj):
    """Every (key, value) of a JSON object in document order, duplicates too."""
    pairs = getattr(obj, "pairs", None)
    return list(obj.items()) if pairs is None else list(pairs)


def _first_key_wins(pairs):
    obj = JsonObject()
    for key, value in pairs:
        obj.setdefault(key, value)
    if len(obj) != len(pairs):
        obj.pairs = pairs
    return obj


def _check_surrogates(document):
    """INVALID_ARGUMENT if a string or key of `document` holds a lone
    surrogate (rapidjson: kParseErrorStringUnicodeSurrogateInvalid); such a
    string cannot become UTF-8 bytes."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid(
                    "JSON Parse error: The surrogate pair in string is invalid "
                    f"({json.dumps(value[:40])}); a \\uD800-\\uDFFF escape "
                    "must be half of a surrogate pair."
                ) from None


def parse_json(body):
    """The JSON object of a request body; INVALID_ARGUMENT if it is not one."""
    if isinstance(body, bytes) and body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM) :]  # rapidjson's EncodedInputStream skips it
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        request = json.loads(
            text,
            object_pairs_hook=_first_key_wins,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except RecursionError:
        raise invalid(
            "JSON Parse error: the document is nested too deeply "
            f"(a tensor has at most {MAX_DEPTH} dimensions)."
        ) from None
    except UnicodeDecodeError as error:
        raise invalid(
            f"JSON Parse error: the body is not valid UTF-8 ({error.reason} at "
            f"offset {error.start})."
        ) from None
    except ValueError as error:
        raise invalid(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise invalid("JSON Value: the request body Is not object")
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(request)
    return request
