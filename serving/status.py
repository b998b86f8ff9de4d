"""Status codes and error messages, shared by every serving path.

`ServingError(code, message)` is a non-OK status with TF Serving's code name
("INVALID_ARGUMENT", "NOT_FOUND", ...). The REST server turns it into an HTTP
status (`HTTP_STATUS`, from `http_server.cc` `ToHTTPStatusCode`) and the gRPC
server into a `grpc.StatusCode` of the same name. `public_message` decides
what a client may read: the message of a client-side code, a generic line for
the rest (never a traceback or a path).

No TensorFlow import here: `python -m serving.fidelity`'s child processes
import this module and must stay free of TensorFlow's Python runtime.
"""

import re

# absl::StatusCode, as `TF_GetCode` and `tf.errors.OpError.error_code` give it.
STATUS_CODE_NAMES = tuple(
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND "
    "ALREADY_EXISTS PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION "
    "ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS "
    "UNAUTHENTICATED".split()
)

# http_server.cc ToHTTPStatusCode; anything else is a 500.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}

# Codes whose message is the caller's business; others get a generic message.
CLIENT_CODES = frozenset(
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"]
    + ["RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"]
)
INTERNAL_MESSAGE = "Internal error."


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


def invalid(message):
    """An INVALID_ARGUMENT `ServingError`."""
    return ServingError("INVALID_ARGUMENT", message)


def code_name(code):
    """The name of an absl status code number ("UNKNOWN" past the table)."""
    return STATUS_CODE_NAMES[code] if 0 <= code < len(STATUS_CODE_NAMES) else "UNKNOWN"


def public_message(error):
    """What a client may read of a `ServingError`."""
    if error.code in CLIENT_CODES and error.message:
        return error.message
    return INTERNAL_MESSAGE


_NOISE_LINES = ("Graph execution error", "Detected at node", "<stack traces")


def clean_message(message):
    """A TF error message without its stack, node names and file paths."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(_NOISE_LINES) or line[:1].isspace():
            continue  # Headers, and stack-trace lines (which name files).
        lines.append(stripped)
    text = " ".join(lines)
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
    text = re.sub(r"(?<![\w.])/[^\s\]\[\'\"]+", "<path>", text)
    return text.strip() or "The model rejected the request."


def from_op_error(error):
    """A `tf.errors.OpError` as a `ServingError` with a cleaned message."""
    return ServingError(code_name(error.error_code), clean_message(error.message or ""))
