"""Reading an HTTP/1.1 request body strictly, within a size limit.

`read_body(rfile, headers, max_body_bytes)` returns the body of a request or
raises `HttpError(status, message)`; after any `HttpError` the server answers
and closes the connection. What it accepts, after libevent's HTTP server
(the one TF Serving's REST API runs on, `util/net_http/server/internal/
evhttp_server.cc`) and RFC 9112 where libevent is lax:

- `Content-Length`: ASCII digits only (`2_8`, `+28`, ` 0x1c` and two
  different values are 400, where Python's `int()` would read 28);
- `Transfer-Encoding: chunked`: read (libevent reads it too), with chunk
  sizes in hex, extensions ignored, trailers skipped; it wins over a
  Content-Length, as in libevent. Any other transfer coding is 501;
- a body that ends before its Content-Length (the client closed its side)
  is 400, never a shorter request run as if whole; a stalled one times out
  (`TimeoutError`, the socket's idle timeout) and the server drops the
  connection, as libevent does on a read timeout;
- over `max_body_bytes`: 413. `drain(...)` then reads and discards what the
  client still sends (at most `MAX_DRAIN_BYTES`), so that a client that
  writes its whole body before reading the answer sees the 413 instead of a
  connection reset. TF Serving sets no body limit at all.
"""

import re

MAX_DRAIN_BYTES = 1 << 30  # what a refused body may still send: 1 GiB
LINGER_S = 1.0  # lingering close: how long to read what a client still sends
LINGER_BYTES = 1 << 20
_READ_CHUNK = 1 << 16
_DIGITS = re.compile(r"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?\r?\n")
_MAX_LINE = 4096  # a chunk-size or trailer line
_MAX_TRAILERS = 64


class HttpError(Exception):
    """An HTTP-level refusal: the status, a message for the client, and for
    413 what is left to discard (`drain_bytes`, or `chunked=True`)."""

    def __init__(self, status, message, drain_bytes=0, chunked=False):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.drain_bytes = drain_bytes
        self.chunked = chunked


def content_length(headers):
    """The request's Content-Length (None if absent); 400 if malformed."""
    values = headers.get_all("Content-Length") or []
    lengths = {value.strip(" \t") for value in values}
    if not lengths:
        return None
    if len(lengths) > 1:
        raise HttpError(400, f"Conflicting Content-Length headers: {sorted(lengths)}.")
    (text,) = lengths
    if not _DIGITS.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise HttpError(
            400,
            f"Invalid Content-Length {shown!r}: expected a decimal number of "
            "bytes (ASCII digits only).",
        )
    return int(text)


def is_chunked(headers):
    """True for `Transfer-Encoding: chunked`; 501 for any other coding."""
    values = headers.get_all("Transfer-Encoding") or []
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c]
    if not codings:
        return False
    if codings == ["chunked"]:
        return True
    raise HttpError(
        501,
        f"Transfer-Encoding {', '.join(codings)} is not supported; send the "
        "body with a Content-Length or Transfer-Encoding: chunked.",
    )


def _too_large(size_text, max_body_bytes, **drain):
    return HttpError(
        413,
        f"Request body of {size_text} bytes is over the limit of "
        f"{max_body_bytes} bytes (--max_body_bytes).",
        **drain,
    )


def read_exactly(rfile, length):
    """`length` bytes, or 400 if the client ends its side before them."""
    parts, got = [], 0
    while got < length:
        part = rfile.read(min(length - got, _READ_CHUNK))
        if not part:
            raise HttpError(
                400,
                f"The request body ended after {got} of the {length} bytes its "
                "Content-Length announced.",
            )
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _line(rfile):
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        raise HttpError(400, "The chunked request body ended before its last chunk.")
    if len(line) > _MAX_LINE:
        raise HttpError(400, "A line of the chunked request body is too long.")
    return line


def _chunks(rfile):
    """Yields (size, read) for each chunk; `read()` returns its data."""
    while True:
        match = _CHUNK_SIZE.fullmatch(_line(rfile))
        if not match:
            raise HttpError(400, "Malformed chunk size line in the chunked body.")
        size = int(match.group(1), 16)
        if size == 0:
            for _ in range(_MAX_TRAILERS):
                if _line(rfile) in (b"\r\n", b"\n"):
                    return
            raise HttpError(400, "Too many trailer lines after the chunked body.")

        def read(size=size):
            data = read_exactly(rfile, size)
            if _line(rfile) not in (b"\r\n", b"\n"):
                raise HttpError(400, "A chunk is longer than its chunk size.")
            return data

        yield size, read


def read_body(rfile, headers, max_body_bytes):
    """The request body (b"" when there is none); raises `HttpError`."""
    chunked = is_chunked(headers)
    if chunked:
        parts, total = [], 0
        for size, read in _chunks(rfile):
            total += size
            if total > max_body_bytes:
                raise _too_large(f"more than {max_body_bytes}", max_body_bytes,
                                 drain_bytes=size, chunked=True)  # fmt: skip
            parts.append(read())
        return b"".join(parts)
    length = content_length(headers)
    if not length:
        return b""
    if length > max_body_bytes:
        raise _too_large(str(length), max_body_bytes, drain_bytes=length)
    return read_exactly(rfile, length)


def drain(rfile, error):
    """Reads and discards the rest of a refused body (at most MAX_DRAIN_BYTES
    in all); returns True if it was all read."""
    left, pending = MAX_DRAIN_BYTES, error.drain_bytes
    try:
        while True:
            while pending > 0 and left > 0:
                part = rfile.read(min(pending, left, _READ_CHUNK))
                if not part:
                    return False
                pending -= len(part)
                left -= len(part)
            if left <= 0 or not error.chunked:
                return left > 0
            if _line(rfile) not in (b"\r\n", b"\n"):  # the end of the chunk
                return False
            match = _CHUNK_SIZE.fullmatch(_line(rfile))
            if not match:
                return False
            pending = int(match.group(1), 16)
            if pending == 0:
                for _ in range(_MAX_TRAILERS):
                    if _line(rfile) in (b"\r\n", b"\n"):
                        return True
                return False
    except HttpError:  # the client ended its side: nothing more to read
        return False


def linger(sock):
    """Reads and discards what the client still sends, after this side has
    shut down writing, until EOF, LINGER_S or LINGER_BYTES (Apache's
    lingering close): closing a socket with unread data sends a reset,
    which can destroy the answer before the client reads it."""
    try:
        sock.settimeout(LINGER_S)
        left = LINGER_BYTES
        while left > 0:
            data = sock.recv(min(left, _READ_CHUNK))
            if not data:
                return
            left -= len(data)
    except OSError:  # a timeout or a reset: close anyway
        return
