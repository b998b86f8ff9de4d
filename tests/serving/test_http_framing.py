"""HTTP framing, body limits, timeouts and the connection cap of the REST
server (serving/http_body.py, serving/connections.py; issue 13 items 2, 7,
8, 10 and 11), over raw sockets on 127.0.0.1 with bounded waits."""

import http.client
import json
import socket
import time

import pytest

from serving import server as server_lib
from tests.serving.rest import NAME, check_error, request
from tests.serving.rest_server import start_server, stop_server

IDLE_S = 1.0
MAX_CONNECTIONS = 4
MAX_BODY = 64 << 10
PATH = f"/v1/models/{NAME}:predict"
PATH_BYTES = PATH.encode()
BODY = json.dumps({"instances": [[5, 6, 7]]}).encode()


@pytest.fixture(scope="module")
def server(exported):
    server = start_server(
        exported["model_dir"],
        poll_s=0,
        idle_timeout_s=IDLE_S,
        max_connections=MAX_CONNECTIONS,
        max_body_bytes=MAX_BODY,
    )
    yield server
    stop_server(server)


def _connect(server):
    sock = socket.create_connection(server.server_address[:2], timeout=10)
    sock.settimeout(10)
    return sock


def _read_response(sock):
    """(status, JSON body) of one response read from a raw socket."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    payload = response.read()
    return response.status, json.loads(payload) if payload else None


def _raw(server, head, body=b"", shut_write=False):
    sock = _connect(server)
    try:
        sock.sendall(head + body)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return _read_response(sock)
    finally:
        sock.close()


def _head(length=None, extra=b"", target=PATH_BYTES):
    head = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n"
    if length is not None:
        head += b"Content-Length: " + length + b"\r\n"
    return head + extra + b"\r\n"


def _assert_closed_within(sock, seconds):
    """The server closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        assert sock.recv(1024) == b""
    except ConnectionResetError:
        pass


@pytest.mark.parametrize("length", [b"2_8", b"+28", b"0x1c", b" 28 x", b"-28"])
def test_content_length_must_be_ascii_digits(server, exported, length):
    # Python's int() reads "2_8" and "+28" as 28; RFC 9112 and libevent do not.
    status, body = _raw(server, _head(length), b"x" * 28)
    check_error(status, body, 400, exported)
    assert "Content-Length" in body["error"]


def test_conflicting_content_lengths_are_400(server, exported):
    head = _head(b"28", extra=b"Content-Length: 29\r\n")
    status, body = _raw(server, head, b"x" * 29)
    check_error(status, body, 400, exported)
    assert "Conflicting" in body["error"]


def test_a_body_shorter_than_its_content_length_is_400(server, exported):
    # Before: the 20 bytes were parsed and answered (200 for a valid prefix).
    status, body = _raw(server, _head(str(len(BODY) + 40).encode()), BODY, True)
    check_error(status, body, 400, exported)
    assert f"ended after {len(BODY)} of the {len(BODY) + 40} bytes" in body["error"]


def test_a_chunked_body_is_read(server):
    # libevent reads chunked bodies; the local server answered 411 before.
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (BODY[:7], BODY[7:])
    )
    extra = b"Transfer-Encoding: chunked\r\n"
    status, body = _raw(server, _head(extra=extra), chunks + b"0\r\nX-T: 1\r\n\r\n")
    assert status == 200, body
    assert len(body["predictions"]) == 1


def test_a_malformed_or_oversized_chunked_body_is_refused(server, exported):
    extra = b"Transfer-Encoding: chunked\r\n"
    status, body = _raw(server, _head(extra=extra), b"zz\r\n{}\r\n0\r\n\r\n")
    check_error(status, body, 400, exported)
    big = b"%x\r\n%s\r\n0\r\n\r\n" % (MAX_BODY + 1, b"x" * (MAX_BODY + 1))
    status, body = _raw(server, _head(extra=extra), big)
    check_error(status, body, 413, exported)
    status, body = _raw(server, _head(extra=b"Transfer-Encoding: gzip\r\n"), b"")
    check_error(status, body, 501, exported)


def test_an_absolute_form_target_is_served(server):
    host, port = server.server_address[:2]
    target = f"http://{host}:{port}{PATH}".encode()
    status, body = _raw(server, _head(str(len(BODY)).encode(), target=target), BODY)
    assert status == 200, body


@pytest.mark.parametrize(
    "version", ["9223372036854775808", "99999999999999999999", "1" * 4301]
)
def test_a_version_beyond_int64_is_400(server, exported, version):
    # http_rest_api_util.cc: "Failed to convert version: V to numeric."
    # (was a 404, and a 500 past Python's 4,300-digit int() limit).
    status, body = request(
        server, "POST", f"/v1/models/{NAME}/versions/{version}:predict", raw=BODY
    )
    check_error(status, body, 400, exported)
    assert body["error"].startswith("Failed to convert version: ")
    assert len(body["error"]) < 200


def test_an_oversized_body_gets_a_readable_413(server, exported):
    # 20 MiB, over 16 x the limit: the old server closed without reading it,
    # and a client still writing saw a connection reset instead of the 413.
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("POST", PATH, body=b"x" * (20 << 20))
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    check_error(response.status, body, 413, exported)
    assert f"over the limit of {MAX_BODY} bytes" in body["error"]


def test_expect_100_continue_gets_the_413_before_the_body(server, exported):
    head = _head(b"%d" % (50 << 20), extra=b"Expect: 100-continue\r\n")
    status, body = _raw(server, head)  # the 50 MB body is never sent
    check_error(status, body, 413, exported)


def test_keep_alive_then_an_idle_connection_is_closed(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(2):  # two requests, one connection
            connection.request("POST", PATH, body=BODY)
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        sock = connection.sock
        _assert_closed_within(sock, IDLE_S + 5)
    finally:
        connection.close()


def test_a_stalled_body_is_dropped_after_the_idle_timeout(server):
    sock = _connect(server)
    try:
        sock.sendall(_head(b"100") + b'{"instances": ')
        _assert_closed_within(sock, IDLE_S + 5)
    finally:
        sock.close()


def _wait_for_open(server, count, seconds=10):
    deadline = time.monotonic() + seconds
    while server.connections.open != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections.open == count


def test_connections_over_the_cap_get_503_and_the_cap_frees(server, exported):
    _wait_for_open(server, 0)
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        _wait_for_open(server, MAX_CONNECTIONS)
        status, body = _raw(server, _head(str(len(BODY)).encode()), BODY)
        check_error(status, body, 503, exported)
        assert f"takes {MAX_CONNECTIONS} at a time" in body["error"]
    finally:
        for sock in idle:
            sock.close()
    _wait_for_open(server, 0)
    status, body = _raw(server, _head(str(len(BODY)).encode()), BODY)
    assert status == 200, body


def test_a_busy_port_says_so(exported, capsys):
    # Before: AttributeError: 'ModelServer' object has no attribute 'core'.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError):
            server_lib.make_server(exported["model_dir"], NAME, port=port, poll_s=0)
        with pytest.raises(SystemExit) as info:
            server_lib.main(
                ["--model_base_path", exported["model_dir"], "--model_name", NAME]
                + ["--port", str(port), "--file_system_poll_wait_seconds", "0"]
            )
    finally:
        taken.close()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "already in use" in err
    assert "Traceback" not in err
